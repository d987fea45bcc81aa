"""`python kill_inside_writer.py POINT lorakit ARGS...`: run `lorakit ARGS` and SIGKILL this process inside an
export writer, at POINT: `merge` (the merged model's weights written into the staging folder, its tokenizer
not yet) or `gguf` (after the GGUF file's second tensor). A real kill: no `finally`, no cleanup runs."""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(point: str, argv: list[str]) -> int:
    if point == "merge":
        from transformers import PreTrainedModel

        save = PreTrainedModel.save_pretrained

        def save_then_die(self, folder, *args, **kwargs):
            save(self, folder, *args, **kwargs)
            _die()

        PreTrainedModel.save_pretrained = save_then_die
    else:
        import gguf

        write, written = gguf.GGUFWriter.write_tensor_data, []

        def write_then_die(self, *args, **kwargs):
            write(self, *args, **kwargs)
            written.append(1)
            if len(written) == 2:
                self.fout[0].flush() if isinstance(self.fout, list) else self.fout.flush()
                _die()

        gguf.GGUFWriter.write_tensor_data = write_then_die
    from lorakit.cli.app import run_cli

    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
