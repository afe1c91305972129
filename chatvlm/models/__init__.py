"""Our own PyTorch ports of models that upstream ships only as remote code.

Each subpackage loads the official checkpoint by its official parameter names and is
verified against the reference fixtures in ../shared/fixtures/<model>/.
"""
