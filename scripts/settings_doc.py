"""Print the configuration reference (every setting, its environment variable, default and meaning) as Markdown.

``python scripts/settings_doc.py`` prints it; ``--write`` replaces the section between the markers in README.md.
A test fails when README.md is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from chatplane.auth.settings import AuthSettings
from chatplane.common.settings import InferenceClientSettings, ServiceSettings
from chatplane.conversation.settings import ConversationSettings
from chatplane.gateway.settings import GatewaySettings
from chatplane.inference.settings import InferenceSettings

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
SERVICES = [
    ("gateway", GatewaySettings),
    ("auth", AuthSettings),
    ("conversation", ConversationSettings),
    ("inference", InferenceSettings),
]


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None or value == "" or value == [] or value == {}:
        return "(unset)"
    return f"`{getattr(value, 'value', value)}`"


def _env_name(cls, name: str, field) -> str:
    alias = field.validation_alias
    if alias is not None:
        return alias.choices[0]
    return f"{cls.model_config['env_prefix']}{name}".upper()


def render() -> str:
    shared = set(ServiceSettings.model_fields) - {"host", "port", "shutdown_grace_seconds"}
    lines = ["Shared by every service:", "", "| variable | default | meaning |", "|---|---|---|"]
    for name in sorted(shared):
        field = ServiceSettings.model_fields[name]
        lines.append(f"| `{_env_name(ServiceSettings, name, field)}` | {_default(field)} | {field.description} |")
    lines += ["", "Shared by the callers of inference (gateway, conversation and its jobs worker):", "",
              "| variable | default | meaning |", "|---|---|---|"]
    for name, field in InferenceClientSettings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{_env_name(InferenceClientSettings, name, field)}` | {_default(field)} | {desc} |")
    shared |= set(InferenceClientSettings.model_fields)
    for service, cls in SERVICES:
        lines += ["", f"**{service}**:", "", "| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            if name in shared:
                continue
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{_env_name(cls, name, field)}` | {_default(field)} | {desc} |")
    return "\n".join(lines)


def section(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    doc = render()
    if "--write" in sys.argv:
        text = README.read_text()
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{BEGIN}\n{doc}\n{END}{tail}")
    else:
        print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
