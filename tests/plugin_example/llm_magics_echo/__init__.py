"""A minimal third-party method: counts words of a text column."""
from dataclasses import dataclass

from llm_magics.common_options import RunOptions
from llm_magics.data import infer_text_column, load_frame
from llm_magics.method import Method, Result
from llm_magics.options import option


@dataclass
class EchoOptions(RunOptions):
    data: object = option(None, "a table with a text column")
    shout: bool = option(False, "upper-case the first text")


class EchoMethod(Method):
    name = "echo"
    summary = "Counts the words in a text column (a plugin example)."
    Options = EchoOptions

    def run(self, o, ctx):
        frame = load_frame(o.data, ctx.namespace)
        texts = frame[infer_text_column(frame, None)].astype(str)
        first = texts.iloc[0].upper() if o.shout else texts.iloc[0]
        return Result(method=self.name, metrics={"rows": len(texts), "words": int(texts.str.split().str.len().sum())},
                      notes=[first])
