"""The package layout promises: flow_engine never imports actionflow; both CLIs list their commands."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flow_engine_never_imports_actionflow():
    offenders = []
    for path in (ROOT / "flow_engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "actionflow"]
    assert not offenders, offenders


def test_clis_list_their_commands():
    from actionflow.__main__ import COMMANDS as AF
    from flow_engine.__main__ import COMMANDS as FE

    for package, commands in (("flow_engine", FE), ("actionflow", AF)):
        out = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        for name in commands:
            assert name in out.stdout, (package, name)


def test_every_cli_command_module_has_its_entry_points():
    import importlib

    from actionflow.__main__ import COMMANDS as AF
    from flow_engine.__main__ import COMMANDS as FE

    for module, _ in list(FE.values()) + list(AF.values()):
        mod = importlib.import_module(module)
        # add_arguments(parser) + run(args), or main(argv, prog) for a command with a parser of its own (train)
        own_parser = callable(getattr(mod, "main", None))
        assert own_parser or (callable(mod.add_arguments) and callable(mod.run)), module


def test_no_module_is_much_over_600_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for package in ("flow_engine", "actionflow") for p in (ROOT / package).rglob("*.py")}
    sizes["train.py"] = len((ROOT / "train.py").read_text().splitlines())
    assert not {k: v for k, v in sizes.items() if v > 650}, sizes


def test_the_application_loads_none_of_pwcnet_training():
    """PWC-Net's training (flow_engine.training, and the data only it reads) stays fenced off from the application."""
    code = ("import sys, actionflow.data, actionflow.classify, actionflow.precompute, actionflow.module\n"
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "actionflow.precompute" in loaded and "flow_engine.engine" in loaded  # the check sees what was imported
    training = {m for m in loaded if m.startswith(("flow_engine.training", "flow_engine.data"))}
    assert not training, sorted(training)


def test_every_error_of_a_package_derives_from_its_base():
    """flow_engine's errors are FlowEngineErrors and actionflow's ActionflowErrors, so a command catches
    one class; each keeps the builtin it was (a VideoError or a CacheError is still a RuntimeError)."""
    import importlib
    import inspect
    import pkgutil

    import actionflow
    import flow_engine
    from actionflow.errors import ActionflowError
    from flow_engine.errors import FlowEngineError

    found = {}
    for package, base in ((flow_engine, FlowEngineError), (actionflow, ActionflowError)):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, Exception) and cls.__module__ == info.name:
                    found[name] = cls
                    assert issubclass(cls, base), f"{info.name}.{name} is not a {base.__name__}"
    assert {"VideoError", "WeightsError", "DatasetError", "CacheError", "AnnotationError", "BadVideo", "UploadError"} <= set(found)
    assert issubclass(found["VideoError"], RuntimeError) and issubclass(found["CacheError"], RuntimeError)
    assert issubclass(found["WeightsError"], ValueError) and issubclass(found["AnnotationError"], ValueError)
