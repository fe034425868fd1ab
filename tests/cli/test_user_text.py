"""No user text crashes pcmoe. A mail with a base64 attachment (one run of 43,000 characters
without a space) once killed `pcmoe train` with SIGSEGV inside SentencePiece's BPE trainer; it
trains now. NUL bytes, invalid UTF-8 and very long lines train and encode, as training text and
as a prompt."""
import json
import math
import os
import random
import shutil
import tempfile

from common import check, finish, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-text-")
NOTES = ["Hello team, please find the quarterly report attached below.",
         "The numbers look good and we are ahead of the plan this year.",
         "Let me know if you have any questions about the figures.",
         "I will be out of the office next week on holiday.",
         "Thanks again for all your hard work on this project.",
         "Best regards, and see you at the meeting on Monday."]


def train_sanely(data_dir, name, what, vocab=384, **data):
    """Trains the tiny model on data_dir and checks that it exits 0 with finite losses below
    ln(vocab) + 0.5 (what an untrained model scores). The run's directory."""
    cfg = tiny_config(data_dir, os.path.join(tmp, "cache-" + name))
    cfg["model"]["vocab_size"] = vocab
    cfg["data"].update(data)
    cfg_path, out = os.path.join(tmp, name + ".json"), os.path.join(tmp, name)
    write_json(cfg_path, cfg)
    code, _, err = run("train", "--config", cfg_path, "--out", out)
    check(code == 0, f"{what}: trains (exit {code})")
    if code:
        print("   stderr was:", err.strip()[-1000:])
        return out
    report = json.load(open(os.path.join(out, "report.json")))
    losses = report["final_train_loss"], report["final_val_loss"]
    check(all(math.isfinite(x) and 0 < x < math.log(vocab) + 0.5 for x in losses),
          f"{what}: sane losses, train {losses[0]:.3f}, validation {losses[1]:.3f} (ln {vocab} = {math.log(vocab):.3f})")
    return out


# The mail: six notes around 709 lines of 60 base64 characters (one document: '\n' does not
# split SentencePiece's words), and a reply holding the notes, the validation document.
mail = os.path.join(tmp, "mail", "mail")
os.makedirs(mail)
rng = random.Random(14)
alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
attachment = ["".join(rng.choice(alphabet) for _ in range(60)) for _ in range(709)]
with open(os.path.join(mail, "message.txt"), "w") as f:
    f.write("\n".join(NOTES[:3] + attachment + NOTES[3:]) + "\n")
with open(os.path.join(mail, "reply.txt"), "w") as f:
    f.write(" ".join(NOTES) + "\n")
train_sanely(os.path.dirname(mail), "mail", "a mail with a base64 attachment, BPE tokenizer of 4096", vocab=4096,
             tokenizer_type="bpe", val_fraction=0.2)

# Bytes no text file should hold, in training text and in a prompt.
weird = os.path.join(tmp, "weird")
tiny_corpus(weird)
long_line = "".join(rng.choice(alphabet) for _ in range(200_000))
with open(os.path.join(weird, "one", "binary.txt"), "wb") as f:
    f.write(b"alpha\0beta\0\0gamma.\n\xff\xfe invalid \xc3 utf-8 \xed\xa0\x80 delta.\n" + long_line.encode() + b"\n")
out = train_sanely(weird, "weird", "NUL bytes, invalid UTF-8 and a 200,000-character line")
for what, prompt in [("invalid UTF-8", "alpha \udcff\udcfe beta \udcc3"), ("a 100,000-character", long_line[:100_000])]:
    code, text, err = run("generate", "--checkpoint", os.path.join(out, "checkpoint"), "--prompt", prompt, "--tokens", "4")
    check(code == 0 and text, f"generate from {what} prompt (exit {code})")
    if code:
        print("   stderr was:", err.strip()[-1000:])

shutil.rmtree(tmp)
finish()
