"""Write docs/reference.md from the schema (run after changing any config field)."""

from pathlib import Path

from caramba.reference import render_reference

if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
    path.write_text(render_reference(), encoding="utf-8")
    print(f"wrote {path}")
