import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_ships_models_and_inference(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    code = ("import pyro_implicit, pyro_implicit.models as m, pyro_implicit.inference as i; "
            "print(pyro_implicit.__file__); print(m.__file__); print(i.__file__); "
            "print(m.create_model('wrn-16-1').__class__.__name__)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env, cwd=tmp_path).stdout.split()
    assert all(path.startswith(str(target)) for path in out[:3]), out
    assert out[1].endswith(os.path.join("pyro_implicit", "models", "__init__.py"))
    assert out[2].endswith(os.path.join("pyro_implicit", "inference", "__init__.py"))
    assert out[3] == "WideResNet"
    assert not (target / "models").exists() and not (target / "inference").exists()
    assert (target / "pyro_implicit" / "csrc" / "fused_sgd.cpp").is_file()  # native.SOURCE


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in section.strip().splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_commands_verbatim():
    setup, tests = quickstart_commands()  # "INSTALL && .venv/bin/pyro-implicit demo", "TESTS"
    install, main_job = setup.rsplit(" && ", 1)
    assert main_job.endswith("pyro-implicit demo")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci
    assert any(line.startswith(".venv/bin/ruff check") for line in ci)
