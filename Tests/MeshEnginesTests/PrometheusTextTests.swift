import Testing
@testable import MeshEngines

@Suite struct PrometheusTextTests {
    static let vllm = """
    # HELP vllm:num_requests_running Number of requests currently running on GPU.
    # TYPE vllm:num_requests_running gauge
    vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
    vllm:num_requests_running{model_name="other"} 2.0
    # HELP vllm:num_requests_waiting Number of requests waiting to be processed.
    # TYPE vllm:num_requests_waiting gauge
    vllm:num_requests_waiting{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
    vllm:gpu_cache_usage_perc{model_name="x"} 0.25
    process_start_time_seconds 1.7e9
    """

    @Test func sumsOverLabels() {
        #expect(PrometheusText.sum("vllm:num_requests_running", in: Self.vllm) == 5)
        #expect(PrometheusText.sum("vllm:num_requests_waiting", in: Self.vllm) == 7)
        #expect(PrometheusText.sum("process_start_time_seconds", in: Self.vllm) == 1.7e9)
        #expect(PrometheusText.sum("vllm:absent", in: Self.vllm) == nil)
    }

    @Test func parsesLabelsEscapesAndTimestamps() {
        let s = PrometheusText.parse(#"""
        m{a="x,y",b="say \"hi\"\n",c="back\\slash"} 1 1700000000000
        m2 42
          m3{} -Inf
        m4 NaN
        m5{le="+Inf"} +Inf
        """#)
        #expect(s.count == 5)
        #expect(s[0].name == "m")
        #expect(s[0].labels == ["a": "x,y", "b": "say \"hi\"\n", "c": #"back\slash"#])
        #expect(s[0].value == 1)
        #expect(s[1] == PrometheusSample(name: "m2", value: 42))
        #expect(s[2].value == -.infinity)
        #expect(s[3].value.isNaN)
        #expect(s[4].labels["le"] == "+Inf" && s[4].value == .infinity)
    }

    @Test func skipsMalformedLinesAndComments() {
        let s = PrometheusText.parse("""
        # comment 1
        #
        {a="b"} 1
        1metric 2
        good 1
        bad{a="unterminated} 1
        bad2{a=unquoted} 1
        bad3 notanumber
        bad4 1 notatimestamp
        bad5{a="b" 1
        good 2\r
        """)
        #expect(s.map(\.name) == ["good", "good"])
        #expect(PrometheusText.sum("good", in: s) == 3)
    }

    @Test func nanIsIgnoredInSums() {
        #expect(PrometheusText.sum("x", in: "x 1\nx NaN\nx 2") == 3)
        #expect(PrometheusText.sum("x", in: "") == nil)
    }

    @Test func llamaServerMetricNames() {
        let text = """
        # HELP llamacpp:requests_processing Number of requests processing.
        # TYPE llamacpp:requests_processing gauge
        llamacpp:requests_processing 2
        llamacpp:requests_deferred 1
        """
        let m = OpenAIAdapter.parseMetrics(text)
        #expect(m.running == 2 && m.waiting == 1)
        let v = OpenAIAdapter.parseMetrics(Self.vllm)
        #expect(v.running == 5 && v.waiting == 7)
        let none = OpenAIAdapter.parseMetrics("go_goroutines 12\n")
        #expect(none.running == nil && none.waiting == nil)
    }
}
