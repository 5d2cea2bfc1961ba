import Testing
@Test func placeholderMeshCoreTests() { #expect(Bool(true)) }
