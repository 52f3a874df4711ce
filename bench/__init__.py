"""pxOS benchmarks. Each prints its figures as ratios against a baseline measured in the
same run, and `--json` prints them as one JSON object. Figures are recorded, with the
machine they ran on, in docs/benchmarks.md."""
