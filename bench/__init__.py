"""hfpipe benchmarks (not tests): start-up, loop throughput against plain PyTorch and transformers.Trainer,
padding, causal-LM pretraining, translation, QA, LoRA, few-shot evaluation against lm-evaluation-harness,
precision switches, time to accuracy, MFU, multi-process scaling, streaming memory.

    make bench                      # every benchmark; writes bench/results.json
    .venv/bin/python bench/run.py --only startup,throughput
    .venv/bin/python -m bench.run --only causal_lm --output /tmp/causal_bench.json

One module per benchmark (or per closely related pair); `run.py` runs them by name. Runs are assembled as
`hfpipe train` assembles them (hfpipe.assemble.prepare_run) and every loop trains hfpipe's schedule
(hfpipe.training.schedule.Schedule). Run them on an idle machine: on 2 shared cores timings vary several-fold.
"""
