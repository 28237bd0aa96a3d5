"""The paper's instruction for hard negative captions, with its two in-context examples."""

INSTRUCTION = (
  "Given an input sentence describing a scene, your task is to first locate the main subject and other "
  "objects, attributes and relations in it. Then write a new sentence that is mostly similar to the input "
  "but has enough significant differences that the two sentences could not describe the same image: change "
  "only a few things, such as counting, objects, attributes or relations. Keep the length of the sentence "
  "about the same. Output only the new sentence, nothing else."
)

EXAMPLES = (
  (
    "A dog sitting to the left of a cat on a sofa.",
    "A dog sitting to the right of a cat on a sofa.",
  ),
  (
    "A man wearing a red helmet riding a motorbike on a dirt road.",
    "A man wearing a blue helmet riding a motorbike on a gravel path.",
  ),
)


def messages(caption: str) -> list[dict]:
  """Chat messages: the instruction, two worked examples as turns, then the caption."""
  out = []
  for i, (src, dst) in enumerate(EXAMPLES):
    out.append(
      {"role": "user", "content": f"{INSTRUCTION}\n\nInput: {src}" if i == 0 else f"Input: {src}"}
    )
    out.append({"role": "assistant", "content": dst})
  out.append({"role": "user", "content": f"Input: {caption}"})
  return out


def render(tokenizer, caption: str) -> str:
  """The prompt text: through the model's chat template when it has one, else a plain few-shot
  prompt."""
  if getattr(tokenizer, "chat_template", None):
    return tokenizer.apply_chat_template(
      messages(caption), tokenize=False, add_generation_prompt=True
    )
  shots = "".join(f"Input: {s}\nOutput: {d}\n\n" for s, d in EXAMPLES)
  return f"{INSTRUCTION}\n\n{shots}Input: {caption}\nOutput:"
