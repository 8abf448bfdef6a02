"""``coldkeep repro …`` through the real command (issue 14): the spec's package layout, checksums
that pass the real ``sha256sum -c``, the RO-Crate read by the ``rocrate`` library, git with a
dirty tree, no ``nvidia-smi``, ``--python`` of another virtualenv, verify naming every failing
file, restore unpacking dataset and models, Tier-1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.datasetsite import damage_files, make_dataset
from tests.helpers import Site, need, one_line_error


@dataclass
class Lab:
    site: Site
    root: Path
    data: Path
    code: Path
    commit: str
    out: Path

    def create(
        self, name: str, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.site.run(
            "--json", "repro", "create", "--name", name, "--dataset", "v3.0",
            "--models", str(self.root / "models" / "cet-d-phase1-final"), str(self.root / "models" / "cet-d-phase2-final"),
            "--code", str(self.code), "--results", str(self.root / "validation"),
            "--training-logs", str(self.root / "training" / "*" / "training.log"),
            "--python", sys.executable, "--out", str(self.out), *extra, env=env,
        )  # fmt: skip


def git(code: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(code), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    need(shutil.which("git") and shutil.which("sha256sum") and shutil.which("tar"), "git, sha256sum, tar")
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = make_dataset(tmp_path / "applications", train=3, holdout=1)
    site.ok("datasets", "snapshot", "--version", "v3.0", "--root", str(data))
    for phase in (1, 2):
        model = tmp_path / "models" / f"cet-d-phase{phase}-final"
        model.mkdir(parents=True)
        (model / "model.safetensors").write_bytes(os.urandom(50_000 + phase))
        (model / "config.json").write_text(json.dumps({"phase": phase}))
        log = tmp_path / "training" / f"phase{phase}" / "training.log"
        log.parent.mkdir(parents=True)
        log.write_text(f"phase {phase} loss 0.1\n")
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "validation_results.json").write_text('{"accuracy": 0.9}')
    code = tmp_path / "iccm-code"
    code.mkdir()
    git(code, "init", "-q", "-b", "main")
    git(code, "config", "user.email", "lab@example.invalid")
    git(code, "config", "user.name", "lab")
    (code / "train.py").write_text("print('train')\n")
    git(code, "add", ".")
    git(code, "commit", "-q", "-m", "training code")
    git(code, "remote", "add", "origin", "https://git.example.invalid/iccm.git")
    out = tmp_path / "out"
    out.mkdir()
    return Lab(site, tmp_path, data, code, git(code, "rev-parse", "HEAD").strip(), out)


LAYOUT = {
    "README.md", "hardware_specs.txt", "software_versions.txt", "gpu_driver_version.txt", "checksums.sha256",
    "ro-crate-metadata.json", "models/cet-d-phase1-final.tar.gz", "models/cet-d-phase2-final.tar.gz",
    "code/git_info.txt", "results/validation/validation_results.json",
    "results/training_logs/phase1__training.log", "results/training_logs/phase2__training.log",
}  # fmt: skip


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return dest / archive.name.removesuffix(".tar.gz")


def test_create_layout_checksums_and_crate(lab: Lab, tmp_path: Path) -> None:
    from rocrate.rocrate import ROCrate

    proc = lab.create("iccm_repro_v1.0", env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi on this PATH
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    archive = lab.out / "iccm_repro_v1.0.tar.gz"
    assert result["path"] == str(archive)
    check = subprocess.run(
        ["sha256sum", "-c", archive.name + ".sha256"], cwd=lab.out, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    names = subprocess.run(
        ["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(n.startswith("iccm_repro_v1.0/") for n in names)

    pkg = unpack(archive, tmp_path / "unpacked")
    files = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()}
    assert files >= LAYOUT
    date = json.loads(lab.site.ok("--json", "datasets", "show", "v3.0").stdout)["manifest"]["snapshot_date"][
        :10
    ]
    dataset_file = f"dataset/iccm_dataset_v3.0_{date.replace('-', '')}.tar.gz"
    code_file = f"code/iccm-code_{lab.commit[:12]}.tar.gz"
    assert {dataset_file, code_file} <= files
    # checksums.sha256: every file but itself, accepted by the real sha256sum
    sums = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=pkg, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    listed = {line.split("  ", 1)[1] for line in (pkg / "checksums.sha256").read_text().splitlines()}
    assert listed == files - {"checksums.sha256"}

    assert "nvidia-smi is not installed" in (pkg / "gpu_driver_version.txt").read_text()
    hardware = (pkg / "hardware_specs.txt").read_text()
    assert "## lshw" in hardware or ("## lscpu" in hardware and "MemTotal" in hardware)
    software = (pkg / "software_versions.txt").read_text()
    assert f"interpreter: {sys.executable}" in software and "zstandard==" in software  # the --python given
    info = (pkg / "code" / "git_info.txt").read_text()
    assert (
        f"commit: {lab.commit}" in info and "branch: main" in info and "git.example.invalid/iccm.git" in info
    )
    code_names = subprocess.run(
        ["tar", "-tzf", str(pkg / code_file)], capture_output=True, text=True, check=True
    )
    assert "iccm-code/train.py" in code_names.stdout.split()

    # the RO-Crate, read by the rocrate library: every file with its real hash and size
    crate = ROCrate(str(pkg))
    parts = {e.id: e for e in crate.data_entities}
    assert set(parts) == files - {"ro-crate-metadata.json"}
    for line in (pkg / "checksums.sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if name == "ro-crate-metadata.json":
            continue
        assert parts[name]["sha256"] == digest
        assert int(parts[name]["contentSize"]) == (pkg / name).stat().st_size
    manifest = json.loads(lab.site.ok("--json", "datasets", "show", "v3.0").stdout)["manifest"]
    assert f"sha256:{manifest['content_sha256']}" in parts[dataset_file]["identifier"]
    assert parts[code_file]["version"] == lab.commit
    action = next(e for e in crate.contextual_entities if e.type == "CreateAction")
    assert action["instrument"]["name"] == "coldkeep" and action["instrument"]["version"]
    assert {o.id for o in action["object"]} == {
        dataset_file,
        code_file,
        *(f for f in files if f.startswith("models/")),
    }
    metadata = json.loads((pkg / "ro-crate-metadata.json").read_text())
    assert metadata["@context"][0] == "https://w3id.org/ro/crate/1.1/context"

    listed_pkgs = lab.site.json("repro", "list")
    assert [p["name"] for p in listed_pkgs] == ["iccm_repro_v1.0"]
    assert listed_pkgs[0]["dataset"]["version"] == "v3.0" and listed_pkgs[0]["sha256"] == result["sha256"]
    again = lab.create("iccm_repro_v1.0")
    assert again.returncode == 1 and "recorded already" in one_line_error(again)
    forget = lab.site.run("forget", result["snapshot_id"])
    assert forget.returncode == 2 and "Tier-1" in forget.stderr


def test_gpu_line_from_nvidia_smi(lab: Lab, tmp_path: Path) -> None:
    """With an ``nvidia-smi`` on PATH (a stand-in printing what the real one prints), the driver,
    CUDA version and GPU names are recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--query-gpu=name,driver_version" ]; then\n'
        "  echo 'NVIDIA A100-SXM4-80GB, 535.104.05'; echo 'NVIDIA A100-SXM4-80GB, 535.104.05'; exit 0\nfi\n"
        "echo '| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |'\n"
    )
    smi.chmod(0o755)
    proc = lab.create("with-gpu", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    pkg = unpack(lab.out / "with-gpu.tar.gz", tmp_path / "u")
    gpu = (pkg / "gpu_driver_version.txt").read_text()
    assert "driver_version: 535.104.05" in gpu and "cuda_version: 12.2" in gpu
    assert "gpu 1: NVIDIA A100-SXM4-80GB" in gpu


def test_python_of_another_virtualenv(lab: Lab, tmp_path: Path) -> None:
    venv = tmp_path / "train-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    proc = lab.create("other-env", "--python", python)
    assert proc.returncode == 0, proc.stderr
    pkg = unpack(lab.out / "other-env.tar.gz", tmp_path / "u")
    software = (pkg / "software_versions.txt").read_text()
    assert f"interpreter: {python}" in software and f"prefix: {venv}" in software
    assert "pip==" in software and "zstandard" not in software  # that environment's, not coldkeep's
    bad = lab.create("bad-env", "--python", str(tmp_path / "no-python"))
    assert bad.returncode == 2 and "cannot run the interpreter" in one_line_error(bad)


def test_dirty_tree_refused_or_patched(lab: Lab, tmp_path: Path) -> None:
    (lab.code / "train.py").write_text("print('train, edited')\n")
    proc = lab.create("dirty")
    assert proc.returncode == 2
    assert "uncommitted changes (train.py)" in one_line_error(proc)
    assert lab.site.json("repro", "list") == [] and not (lab.out / "dirty.tar.gz").exists()
    ok = lab.create("dirty", "--allow-dirty")
    assert ok.returncode == 0, ok.stderr
    pkg = unpack(lab.out / "dirty.tar.gz", tmp_path / "u")
    patch = (pkg / "code" / "uncommitted.patch").read_text()
    assert "+print('train, edited')" in patch and "dirty: yes" in (pkg / "code" / "git_info.txt").read_text()
    # the archive holds the commit; the patch turns it into the tree that ran
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(lab.code), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "apply", str(pkg / "code" / "uncommitted.patch")], check=True)
    assert (clone / "train.py").read_text() == "print('train, edited')\n"
    # a named revision is packaged as committed, whatever the working tree
    rev = lab.site.run("--json", "repro", "create", "--name", "at-rev", "--dataset", "v3.0", "--models",
                       str(lab.root / "models" / "cet-d-phase1-final"), "--code", f"{lab.code}@{lab.commit[:10]}",
                       "--python", sys.executable, "--out", str(lab.out))  # fmt: skip
    assert rev.returncode == 0, rev.stderr


def test_verify_names_every_failing_file_and_restore(lab: Lab, tmp_path: Path) -> None:
    assert lab.create("pkg").returncode == 0
    archive = lab.out / "pkg.tar.gz"
    assert lab.site.json("repro", "verify", str(archive))["ok"] is True
    assert lab.site.json("repro", "verify", "pkg")["ok"] is True

    # a package altered after the fact: two files changed, one removed, one added
    pkg = unpack(archive, tmp_path / "u")
    (pkg / "results" / "validation" / "validation_results.json").write_text('{"accuracy": 0.99}')
    (pkg / "hardware_specs.txt").write_text("a faster machine\n")
    (pkg / "README.md").unlink()
    (pkg / "results" / "extra.json").write_text("{}")
    tampered = tmp_path / "pkg.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        tar.add(pkg, arcname="pkg")
    proc = lab.site.run("--json", "repro", "verify", str(tampered))
    assert proc.returncode == 3
    result = json.loads(proc.stdout)
    assert result["failing"] == ["README.md", "hardware_specs.txt", "results/extra.json",
                                 "results/validation/validation_results.json"]  # fmt: skip
    assert "4 file(s) failed verification" in one_line_error(proc)
    # the .sha256 beside an archive is checked too
    shutil.copy(archive, tmp_path / "copy.tar.gz")
    (tmp_path / "copy.tar.gz.sha256").write_text("0" * 64 + "  copy.tar.gz\n")
    assert lab.site.run("repro", "verify", str(tmp_path / "copy.tar.gz")).returncode == 3

    restored = lab.site.json("repro", "restore", "pkg", "--to", str(tmp_path / "r"))
    target = tmp_path / "r"
    assert set(restored["unpacked"]) >= {
        "models/cet-d-phase1-final.tar.gz",
        "models/cet-d-phase2-final.tar.gz",
    }
    model = lab.root / "models" / "cet-d-phase1-final"
    assert (target / "models" / "cet-d-phase1-final" / "model.safetensors").read_bytes() == (
        model / "model.safetensors"
    ).read_bytes()
    inner = next(p for p in (target / "dataset").iterdir() if p.is_dir())
    sums = subprocess.run(
        ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=inner, capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert subprocess.run(["sha256sum", "-c", "--quiet", "checksums.sha256"], cwd=target).returncode == 0
    again = lab.site.run("repro", "restore", "pkg", "--to", str(target))
    assert again.returncode == 2
    assert lab.site.run("repro", "verify", "nope").returncode == 5


def test_damaged_blob_named_by_verify(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lab.create("pkg").returncode == 0
    damaged = ["code/git_info.txt", "models/cet-d-phase2-final.tar.gz"]
    damage_files(lab.site, damaged, tmp_path / "api-cache", monkeypatch, kind="repro")
    proc = lab.site.run("--json", "repro", "verify", "pkg")
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["failing"] == damaged
    assert all(name in one_line_error(proc) for name in damaged)
    restore = lab.site.run("repro", "restore", "pkg", "--to", str(tmp_path / "r"))
    assert restore.returncode == 3


def test_bad_input_is_one_line(lab: Lab, tmp_path: Path) -> None:
    def create(*args: str) -> subprocess.CompletedProcess[str]:
        return lab.site.run(
            "repro", "create", "--name", "p", "--python", sys.executable, "--out", str(lab.out), *args
        )

    model = str(lab.root / "models" / "cet-d-phase1-final")
    cases = [
        (["--dataset", "v9", "--models", model, "--code", str(lab.code)], 5, "no dataset version 'v9'"),
        (["--dataset", "v3.0", "--models", str(tmp_path / "none"), "--code", str(lab.code)], 5, "no such model directory"),
        (["--dataset", "v3.0", "--models", model, "--code", str(tmp_path)], 2, "failed"),
        (["--dataset", "v3.0", "--models", model, "--code", f"{lab.code}@no-such-rev"], 2, "no-such-rev"),
        (["--dataset", "v3.0", "--models", model, "--code", str(lab.code), "--training-logs", "/nonexistent/*.log"], 5, "no file matches"),
    ]  # fmt: skip
    for args, code, needle in cases:
        proc = create(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert needle in one_line_error(proc), (args, proc.stderr)
    assert lab.site.json("repro", "list") == [] and list(lab.out.iterdir()) == []
