import Testing
@Test func placeholderMeshHTTPServerTests() { #expect(Bool(true)) }
