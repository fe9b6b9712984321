module gpu-extender/benchmarks/null_extender

go 1.22
