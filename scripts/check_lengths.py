"""Size limits of src/: no source file over 450 lines, and no function over 120 lines unless
the comment just above it says why it is long (a line of it starting "Long:"). A function is
found the plain way this code base writes them: a definition starting in column 0 whose
signature reaches a "{" at the end of a line, running to the next line that is exactly "}".
Usage: python3 scripts/check_lengths.py ."""
import os
import re
import sys

source = sys.argv[1]
MAX_FILE, MAX_FUNCTION = 450, 120
problems, longest = [], []
for folder in sorted(os.listdir(os.path.join(source, "src"))):
    for name in sorted(os.listdir(os.path.join(source, "src", folder))):
        rel = f"src/{folder}/{name}"
        lines = open(os.path.join(source, rel), encoding="utf-8").read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) > MAX_FILE:
            problems.append(f"{rel}: {len(lines)} lines (limit {MAX_FILE})")
        start = None
        for i, line in enumerate(lines):
            if start is None and re.match(r"[A-Za-z_][^;/]*\(", line) \
                    and not re.match(r"(namespace|class|struct|enum|union|extern|using|typedef)\b", line):
                # the signature may run over a few lines before its "{"
                for j in range(i, min(i + 6, len(lines))):
                    if lines[j].endswith(";"):
                        break
                    if lines[j].endswith("{"):
                        start = i
                        break
            elif start is not None and line == "}":
                length = i - start + 1
                longest.append((length, f"{rel}:{start + 1}"))
                if length > MAX_FUNCTION:
                    comment = []
                    j = start - 1
                    while j >= 0 and lines[j].startswith("//"):
                        comment.append(lines[j])
                        j -= 1
                    if not any(c.startswith("// Long:") for c in comment):
                        problems.append(f"{rel}:{start + 1}: a function of {length} lines (limit {MAX_FUNCTION}) "
                                        "without a \"// Long:\" comment saying why")
                start = None
longest.sort(reverse=True)
print("longest functions:", ", ".join(f"{where} ({n})" for n, where in longest[:5]))
for p in problems:
    print("FAIL", p)
print(f"{len(problems)} problems")
sys.exit(1 if problems else 0)
