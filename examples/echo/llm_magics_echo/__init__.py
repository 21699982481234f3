"""A minimal third-party method: counts the words of a text column."""
from llm_magics.plugin import Method, Result, RunOptions, dataclass, infer_text_column, load_frame, option


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
