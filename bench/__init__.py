"""`tokenhub.bench`: load for the pipeline and measurements of it, in one place.

- `load`: a realistic, seeded day of the company's AI usage, its registry and
  price book, and its spend recomputed from the files alone
- `demo`: the demo's scenario end to end on the embedded stack (`tokenhub demo`)
- `benchmark`: throughput, latency, replay and verify against plain Kafka
  passthroughs measured in the same run (`tokenhub bench`)
- `passthrough`: those baselines, one hop per process
"""
