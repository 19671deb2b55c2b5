"""Stand-in for WebUI 1.10.1 ``modules/prompt_parser.py::parse_prompt_attention``: ``(x)`` x1.1,
``[x]`` /1.1, ``(x:w)``, backslash escapes ``\\( \\) \\[ \\] \\\\`` (a lone backslash is dropped), runs of
equal weight merged. ``BREAK`` is not modeled."""

import re

re_attention = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")


def parse_prompt_attention(text):
    res, round_brackets, square_brackets = [], [], []

    def multiply_range(start, multiplier):
        for item in res[start:]:
            item[1] *= multiplier

    for match in re_attention.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            res.append([token, 1.0])
    for start in round_brackets:
        multiply_range(start, 1.1)
    for start in square_brackets:
        multiply_range(start, 1 / 1.1)
    if not res:
        return [["", 1.0]]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged
