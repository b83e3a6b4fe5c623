"""Training code: what `manage.py train_demo` (and tests/test_demo_model.py) run to make the demo
model and its LoRA. Never imported by the web or the worker at runtime (tests/test_layout.py);
the demo's runtime pieces (weights/, world.py, lora.py's names) stay in generator/pipelines/demo.
"""
