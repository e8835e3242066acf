"""Checks shared by the tests that run a tool's main() in this process."""
import os


def stop_line(main, argv: list[str], capsys, env: dict | None = None) -> str:
    """Run `main(argv)` (with `env` added to the environment); check exit status 1, one 'Error' line and no
    traceback; return that line."""
    saved = dict(os.environ)  # trainSpeakerNet.main may set CUDA_VISIBLE_DEVICES
    os.environ.update(env or {})
    try:
        status = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("Error")]
    assert status == 1 and len(lines) == 1 and "Traceback" not in error, error
    return lines[0]
