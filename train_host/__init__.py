"""LiveGate's host trainer: gather face crops, train LivenessNet, export full-int8 TFLite, evaluate.

TensorFlow is imported lazily (only by ``model``, ``train`` and ``export``), so ``gather`` and
``evaluate`` run where only the edge runtime is installed.
"""
