import Foundation
import PoolTestSupport
import ProcessPool
import Testing

/// These run in a helper process (the test worker executable in a helper
/// mode), so that the other tests' processes and descriptors do not blur
/// the counts.
@Suite("Process hygiene (SEMANTICS E27)", .boundedExitWait, .timeLimit(.minutes(3)))
struct ProcessHygieneTests {
    @Test("100 pools leave no process, zombie or descriptor behind", arguments: ["fork", "spawn", "forkserver"])
    func hundredPools(method: String) async throws {
        let helper = try runHelper(["hundred-pools", method])
        let line = helper.readLine(prefix: "RESULT")
        #expect(helper.waitForExit() == 0)
        let fields = (line ?? "").split(separator: " ")
        #expect(fields.count == 4, "helper said: \(line ?? "nothing")")
        guard fields.count == 4 else { return }
        // RESULT <extra fds> <live children> <zombies>
        #expect(Int(fields[1]).map { $0 <= 0 } == true, "descriptors leaked: \(line!)")
        #expect(fields[2] == "0", "children left: \(line!)")
        #expect(fields[3] == "0", "zombies left: \(line!)")
    }

    @Test("E27: workers die with a parent killed by SIGKILL", arguments: ["fork", "spawn", "forkserver"])
    func parentKilled(method: String) async throws {
        let helper = try runHelper(["orphan-maker", method])
        guard let line = helper.readLine(prefix: "PIDS") else {
            Issue.record("helper did not report its workers")
            kill(helper.pid, SIGKILL)
            _ = helper.waitForExit()
            return
        }
        let pids = line.split(separator: " ").dropFirst().compactMap { Int32($0) }
        #expect(pids.count >= 2)
        #expect(pids.allSatisfy { !processGone($0) })
        kill(helper.pid, SIGKILL)
        #expect(helper.waitForExit() == 128 + SIGKILL)
        #expect(eventually(30) { pids.allSatisfy(processGone) }, "workers still alive: \(pids)")
    }
}
