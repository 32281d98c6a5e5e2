// `import ProcessPool` is all a local user needs: the core and the local
// start methods come with it.
@_exported import ProcessPoolCore
@_exported import ProcessPoolLocal
