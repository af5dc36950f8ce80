"""Benchmarks: what a request costs with flask_uow, beside the alternatives.

Run ``python -m benchmarks`` after ``pip install -e ".[benchmark]"``.
"""
