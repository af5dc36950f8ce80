"""Parts of the telemetry capability (issue 23) that do not need the core;
phase B moves them into ``flask_uow/``.
"""
