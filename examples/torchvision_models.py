"""Profile a torchvision model: the table, the heaviest layers, and the report as CSV.

    python examples/torchvision_models.py
"""

from __future__ import annotations

import csv
import io
import textwrap

import torchvision

from profiler import clever_format, profile


def main() -> None:
    model = torchvision.models.resnet50(weights=None)
    result = profile(model, input_size=(1, 3, 224, 224))
    macs, params = result
    print("MACs, params:", clever_format([macs, params], "%.3f"))
    print(result.table(depth=1))
    print()
    print("The ten layers doing the most work themselves:")
    print(result.table(sort_by="macs", top=10, columns=("layer", "type", "output_shape", "macs", "macs_pct")))
    csv_text = result.to_csv()
    first = next(csv.DictReader(io.StringIO(csv_text)))
    print(f"\nto_csv(): {len(csv_text.splitlines()) - 1} layers, first row:")
    print(textwrap.fill(", ".join(f"{k}={v}" for k, v in first.items()), 100, initial_indent="  ",
                        subsequent_indent="  ", break_on_hyphens=False))


if __name__ == "__main__":
    main()
