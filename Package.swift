// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "ProcessPool",
    products: [
        .library(name: "ProcessPool", targets: ["ProcessPool"]),
        .executable(name: "primes", targets: ["Primes"]),
        .executable(name: "pool-bench", targets: ["PoolBench"]),
        .library(name: "ProcessPoolSSH", targets: ["ProcessPoolSSH"]),
        .executable(name: "ssh-farm", targets: ["SSHFarm"]),
        .executable(name: "pool-soak", targets: ["PoolSoak"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // C shim: the Linux calls Swift's Glibc module does not expose.
        .target(name: "CProcessPoolShim", path: "Sources/CProcessPoolShim"),
        // The transport-neutral core: executor, futures, wire protocol, worker loop.
        .target(
            name: "ProcessPoolCore",
            dependencies: [
                "CProcessPoolShim",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/ProcessPoolCore"
        ),
        // Local start methods: fork, spawn, forkserver.
        .target(
            name: "ProcessPoolLocal",
            dependencies: ["ProcessPoolCore", "CProcessPoolShim"],
            path: "Transports/ProcessPoolLocal"
        ),
        // The public umbrella: `import ProcessPool` is all a local user needs.
        .target(
            name: "ProcessPool",
            dependencies: [
                "ProcessPoolCore", "ProcessPoolLocal", "CProcessPoolShim",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/ProcessPool"
        ),
        // libssh2 (Debian: libssh2-1-dev), found through pkg-config.
        .systemLibrary(
            name: "CLibSSH2",
            path: "Transports/CLibSSH2",
            pkgConfig: "libssh2",
            providers: [.apt(["libssh2-1-dev"])]
        ),
        // The ssh start method: remote worker farms through libssh2.
        .target(
            name: "ProcessPoolSSH",
            dependencies: [
                "ProcessPool", "ProcessPoolCore", "CLibSSH2", "CProcessPoolShim",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Transports/ProcessPoolSSH"
        ),
        .executableTarget(
            name: "SSHFarm",
            dependencies: ["ProcessPoolSSH", "ProcessPool"],
            path: "Examples/SSHFarm"
        ),
        .executableTarget(
            name: "Primes",
            dependencies: ["ProcessPool"],
            path: "Examples/Primes"
        ),
        // The benchmark against CPython: swift run -c release pool-bench
        .executableTarget(
            name: "PoolBench",
            dependencies: ["ProcessPool"],
            path: "Benchmarks/PoolBench",
            // The Swift runtime linked in, as README's "Deploying workers"
            // recommends for worker programs: a spawned worker then maps no
            // Swift shared libraries (see the worker RSS row).
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]
        ),
        // Tasks shared by the tests and their worker executable.
        .target(
            name: "PoolTestSupport",
            dependencies: ["ProcessPool"],
            path: "Tests/PoolTestSupport"
        ),
        .executableTarget(
            name: "PoolTestWorker",
            dependencies: ["PoolTestSupport", "ProcessPool"],
            path: "Tests/PoolTestWorker"
        ),
        // The chaos soak: swift run -c release pool-soak --minutes N [--methods fork,spawn,forkserver,ssh]
        .executableTarget(
            name: "PoolSoak",
            dependencies: ["PoolTestSupport", "ProcessPool", "ProcessPoolSSH"],
            path: "Tests/PoolSoak"
        ),
        .testTarget(
            name: "ProcessPoolTests",
            dependencies: ["ProcessPool", "PoolTestSupport", "PoolTestWorker"],
            path: "Tests/ProcessPoolTests"
        ),
        .testTarget(
            name: "ProcessPoolSSHTests",
            dependencies: ["ProcessPoolSSH", "ProcessPool", "PoolTestSupport", "PoolTestWorker", "SSHFarm"],
            path: "Tests/ProcessPoolSSHTests"
        ),
    ]
)
