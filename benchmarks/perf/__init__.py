"""Speed and memory measurements; each script writes a result file under benchmarks/results/."""
