"""Killing a run part way, for the resume tests."""


def interrupt_on_call(monkeypatch, module, name: str, call: int):
    """Replaces ``module.name`` so that its ``call``-th call raises KeyboardInterrupt (as
    Ctrl-C would there); returns the real function, to put back with ``monkeypatch``."""
    real, calls = getattr(module, name), []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)
    return real
