"""durable.AtomicOutput: a streamed file is whole or absent, through errors and kill -9."""

from __future__ import annotations

from pathlib import Path


def test_atomic_output_is_the_whole_file_or_what_was_there(tmp_path: Path) -> None:
    """A streamed export (AtomicOutput): a block that raises leaves ``dest`` as it was and no
    temporary file; one that ends writes the whole file; a process killed mid-block leaves
    ``dest`` untouched (only a ``.<name>.tmp-…`` file, which never takes the name)."""
    import os
    import subprocess
    import sys

    from coldkeep.durable import AtomicOutput

    dest = tmp_path / "export.tar.zst"
    dest.write_bytes(b"old")
    try:
        with AtomicOutput(dest) as f:
            f.write(b"half of the new")
            raise RuntimeError("stream failed")
    except RuntimeError:
        pass
    assert dest.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["export.tar.zst"]
    with AtomicOutput(dest) as f:
        f.write(b"new " * 1000)
    assert dest.read_bytes() == b"new " * 1000 and oct(dest.stat().st_mode & 0o777) == "0o644"
    killer = (
        "import os, signal, sys\nfrom coldkeep.durable import AtomicOutput\n"
        "with AtomicOutput(sys.argv[1]) as f:\n    f.write(b'x' * 100000); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", killer, str(dest)], env=dict(os.environ), check=False)
    assert done.returncode == -9
    assert dest.read_bytes() == b"new " * 1000
    assert [p.name.startswith(".export.tar.zst.tmp-") for p in tmp_path.iterdir() if p != dest] == [True]
