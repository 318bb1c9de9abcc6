"""hfpipe's built-in metrics as local `evaluate` modules, which load offline.

    import evaluate
    from hfpipe.metrics import evaluate_module
    metric = evaluate.load(evaluate_module("classification"))
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)

The numbers are those of hfpipe.metrics (scikit-learn / scipy), so a run's metrics.json and an
`evaluate` pipeline agree. hfpipe itself never imports evaluate for these.
"""
