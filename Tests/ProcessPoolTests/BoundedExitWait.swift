import PoolTestSupport
import Testing

/// Every suite carries this trait: it bounds the runner's wait at exit for
/// pools a failed test left busy (see `TestEnvironment.boundExitWait()`).
struct BoundedExitWait: SuiteTrait, TestScoping {
    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        TestEnvironment.boundExitWait()
        try await function()
    }
}

extension Trait where Self == BoundedExitWait {
    /// Bounds the runner's wait at exit for pools a failed test left busy.
    static var boundedExitWait: Self { Self() }
}
