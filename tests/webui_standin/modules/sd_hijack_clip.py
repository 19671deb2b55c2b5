"""Stand-in for WebUI 1.10.1 ``modules/sd_hijack_clip.py::FrozenCLIPEmbedderWithCustomWords`` (SD 1.x).

``forward(texts)`` parses each text with ``prompt_parser.parse_prompt_attention`` unless
``opts.emphasis == "None"``, tokenizes each part without special tokens, splits the tokens into
chunks of 75, encodes each chunk as ``[BOS] + tokens + [EOS]`` padded with EOS to 77 through
``wrapped.transformer``, and applies ``sd_emphasis.py``'s "Original" emphasis (multiply, then restore
the mean; "Ignore" and "None" leave the output as is). The chunks are concatenated: (B, 77*k, D).
Comma backtracking, TI embeddings and clip skip are not modeled.
"""

import torch

from modules import devices, prompt_parser, shared


class FrozenCLIPEmbedderWithCustomWords(torch.nn.Module):
    chunk_length = 75

    def __init__(self, wrapped, hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack
        self.id_start = wrapped.tokenizer.bos_token_id
        self.id_end = wrapped.tokenizer.eos_token_id

    def tokenize_line(self, line):
        parsed = prompt_parser.parse_prompt_attention(line) if shared.opts.emphasis != "None" else [[line, 1.0]]
        tokenized = self.wrapped.tokenizer([text for text, _ in parsed], truncation=False,
                                           add_special_tokens=False)["input_ids"]
        tokens, multipliers = [], []
        for ids, (_, weight) in zip(tokenized, parsed):
            tokens += ids
            multipliers += [weight] * len(ids)
        starts = range(0, max(len(tokens), 1), self.chunk_length)
        return [(tokens[s:s + self.chunk_length], multipliers[s:s + self.chunk_length]) for s in starts]

    def forward(self, texts):
        batch_chunks = [self.tokenize_line(text) for text in texts]
        zs = []
        for index in range(max(len(chunks) for chunks in batch_chunks)):
            tokens, multipliers = [], []
            for chunks in batch_chunks:
                chunk_tokens, chunk_multipliers = chunks[index] if index < len(chunks) else ([], [])
                padding = self.chunk_length - len(chunk_tokens) + 1
                tokens.append([self.id_start] + chunk_tokens + [self.id_end] * padding)
                multipliers.append([1.0] + chunk_multipliers + [1.0] * padding)
            zs.append(self.process_tokens(tokens, multipliers))
        return torch.hstack(zs)

    def process_tokens(self, tokens, multipliers):
        z = self.wrapped.transformer(input_ids=torch.asarray(tokens).to(devices.device)).last_hidden_state
        if shared.opts.emphasis == "Original":
            original_mean = z.mean()
            z = z * torch.asarray(multipliers).to(z)[..., None]
            z = z * (original_mean / z.mean())
        return z
