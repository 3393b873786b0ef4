"""The DICOM vocabulary has one home: agent/dicom imports nothing else from agent, and no
other module defines a status code of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.dicom import status
from agent.dicom.contexts import QR_SOP_CLASSES, qr_sop_class, service_of
from agent.dicom.models import Level, Model

AGENT = Path(__file__).resolve().parent.parent / "agent"
STATUS_NAMES = {name for name in vars(status) if name.isupper()} | {
    "UNABLE_TO_PROCESS", "NOT_AUTHORISED", "WARNING", "FAILURE",
}


def modules() -> list[Path]:
    return sorted(AGENT.rglob("*.py"))


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_vocabulary_imports_nothing_else_from_agent() -> None:
    for path in (AGENT / "dicom").glob("*.py"):
        for name in imported(ast.parse(path.read_text())):
            if name == "agent" or name.startswith("agent."):
                assert name.startswith("agent.dicom"), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(AGENT)))
def test_no_module_defines_a_status_code_of_its_own(path: Path) -> None:
    if path.is_relative_to(AGENT / "dicom"):
        return
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            name = target.id if isinstance(target, ast.Name) else ""
            assert name not in STATUS_NAMES, f"{name} belongs in agent/dicom/status.py"


@pytest.mark.parametrize(("code", "pending", "warning", "transient", "refusal"), [
    (0x0000, False, False, False, False),
    (0xFF00, True, False, False, False),
    (0xFF01, True, False, False, False),
    (0xB000, False, True, False, False),
    (0xB007, False, True, False, False),
    (0x0107, False, True, False, False),
    (0xA700, False, False, True, False),
    (0xA7FF, False, False, True, False),
    (0xA900, False, False, False, True),
    (0xC123, False, False, False, True),
    (0x0122, False, False, False, True),
    (0x0124, False, False, False, True),
    (0xA801, False, False, False, False),
])
def test_status_classes(code: int, pending: bool, warning: bool, transient: bool,
                        refusal: bool) -> None:
    assert status.is_pending(code) is pending
    assert status.is_warning(code) is warning
    assert status.is_out_of_resources(code) is transient
    assert status.is_refusal(code) is refusal


def test_models_levels_and_qr_sop_classes() -> None:
    assert Model.STUDY_ROOT.levels == (Level.STUDY, Level.SERIES, Level.IMAGE)
    assert Model.PATIENT_STUDY_ONLY.levels == (Level.PATIENT, Level.STUDY)
    assert qr_sop_class(Model.STUDY_ROOT, "move") == "1.2.840.10008.5.1.4.1.2.2.2"
    assert qr_sop_class("PATIENT_ROOT", "get") == "1.2.840.10008.5.1.4.1.2.1.3"
    assert len(QR_SOP_CLASSES) == 9
    assert service_of("1.2.840.10008.5.1.4.1.2.3.1") == "find"
    assert service_of("1.2.840.10008.1.1") == "echo"
    assert service_of("1.2.840.10008.5.1.4.1.1.2") == "store"
