// ProcessPool runs on Linux only: its local start methods rely on pidfds,
// prctl(PR_SET_PDEATHSIG), abstract-namespace Unix sockets and
// MADV_POPULATE_WRITE, which other systems lack. Say so at once rather than
// with a cascade of missing-symbol errors.
#if !os(Linux)
#error("ProcessPool supports Linux only (it uses pidfd, prctl and abstract Unix sockets)")
#endif
