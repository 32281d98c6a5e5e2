import PoolTestSupport
import ProcessPool
import Testing

@Suite("Construction (SEMANTICS A)", .boundedExitWait, .timeLimit(.minutes(3)))
struct ConstructionTests {
    @Test("A1: maxWorkers nil is the usable CPU count; <= 0 is refused")
    func maxWorkersDefaults() throws {
        let pool = try ProcessPoolExecutor(context: .spawn, tasks: testRegistry)
        #expect(pool.maxWorkers == ProcessPoolExecutor.usableCPUCount)
        #expect(pool.maxWorkers >= 1)
        for bad in [0, -1] {
            #expect(throws: ProcessPoolError.invalidMaxWorkers(bad)) {
                try ProcessPoolExecutor(maxWorkers: bad, tasks: testRegistry)
            }
        }
        #expect(ProcessPoolError.invalidMaxWorkers(0).description.contains("maxWorkers must be greater than 0"))
    }

    @Test("A2: maxTasksPerChild <= 0 and with fork are refused; alone it means spawn")
    func maxTasksPerChildValidation() throws {
        #expect(throws: ProcessPoolError.invalidOption("maxTasksPerChild must be >= 1 (got 0)")) {
            try ProcessPoolExecutor(tasks: testRegistry, maxTasksPerChild: 0)
        }
        do {
            _ = try ProcessPoolExecutor(context: .fork, tasks: testRegistry, maxTasksPerChild: 2)
            Issue.record("fork with maxTasksPerChild was accepted")
        } catch let ProcessPoolError.invalidOption(why) {
            #expect(why.contains("fork"))
        }
        let pool = try ProcessPoolExecutor(tasks: testRegistry, maxTasksPerChild: 3)
        #expect(pool.startMethod.name == "spawn")
    }

    @Test("A3: no context means forkserver")
    func defaultContext() throws {
        let pool = try ProcessPoolExecutor(tasks: testRegistry)
        #expect(pool.startMethod.name == "forkserver")
    }

    @Test("A4: the constructor starts no process")
    func constructorStartsNothing() throws {
        for method in localMethods {
            let pool = try makePool(method)
            #expect(pool.liveWorkerCount == 0)
            pool.shutdown(wait: true)
            #expect(pool.liveWorkerCount == 0)
        }
    }

    @Test("StartMethod(named:) knows the three local methods and refuses others")
    func startMethodNames() throws {
        for name in ["fork", "spawn", "forkserver"] {
            #expect(try StartMethod(named: name).name == name)
        }
        #expect(throws: ProcessPoolError.invalidStartMethod("thread")) { try StartMethod(named: "thread") }
    }

    @Test("An unregistered task or initializer is refused in the parent")
    func unregisteredTask() throws {
        let pool = try makePool(.spawn(executable: TestEnvironment.workerExecutable))
        #expect(throws: ProcessPoolError.unregisteredTask("NotRegistered")) { try pool.submit(NotRegistered()) }
        #expect(throws: ProcessPoolError.unregisteredTask("NotRegistered")) {
            try ProcessPoolExecutor(tasks: testRegistry, initializer: NotRegistered())
        }
        #expect(throws: ProcessPoolError.invalidOption("chunkSize must be >= 1 (got 0)")) {
            try pool.map([Echo(1)], chunkSize: 0)
        }
        pool.shutdown(wait: true)
    }
}

