import Testing
@Test func placeholderMeshNodeTests() { #expect(Bool(true)) }
