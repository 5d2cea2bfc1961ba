// The fuzz program (see Tests/Fuzz/README.md): built with `-sanitize=fuzzer,address` by
// tools/fuzz.sh it fuzzes one target; in an ordinary build it replays inputs.
import MeshFuzzing

FuzzDriver.main()
