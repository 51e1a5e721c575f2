import AttentionCore
import XCTest
import _AttentionTestSupport

extension XCTestCase {
    /// Runs attention on `inputs` and asserts that output and log-sum-exp pass the tolerance rule against the
    /// Float64 reference; a failure prints the errors, the bound, the sweep position and the shapes.
    func assertMatchesReference(
        _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), mask: AttentionMask = .none,
        options: AttentionOptions, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let checks = try checkAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: options)
        XCTAssertTrue(checks.output.passes, "\(checks.output)", file: file, line: line)
        XCTAssertTrue(checks.logSumExp.passes, "\(checks.logSumExp)", file: file, line: line)
    }
}
