"""No import runs upward between the package's layers (`tripletclip_jax.LAYERS`)."""

import ast
import os

import tripletclip_jax

ROOT = os.path.dirname(tripletclip_jax.__file__)


def _layer_of() -> dict:
  return {name: i for i, layer in enumerate(tripletclip_jax.LAYERS) for name in layer}


def _imports(path: str):
  """(line, top-level subpackage or module of tripletclip_jax) of every import in `path`, at any
  depth."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.ImportFrom)
      and node.module
      and node.module.split(".")[0] == "tripletclip_jax"
    ):
      parts = node.module.split(".")
      if len(parts) > 1:
        yield node.lineno, parts[1]
      else:  # from tripletclip_jax import a, b
        yield from ((node.lineno, a.name) for a in node.names)
    elif isinstance(node, ast.Import):
      for a in node.names:
        parts = a.name.split(".")
        if parts[0] == "tripletclip_jax" and len(parts) > 1:
          yield node.lineno, parts[1]


def test_every_module_is_in_a_layer():
  layer = _layer_of()
  top = {
    n.removesuffix(".py")
    for n in os.listdir(ROOT)
    if not n.startswith(("_", "."))
    and (
      n.endswith(".py")
      or os.path.isdir(os.path.join(ROOT, n, ""))
      and os.path.exists(os.path.join(ROOT, n, "__init__.py"))
    )
  }
  assert top == set(layer), (
    f"add {sorted(top - set(layer))} to tripletclip_jax.LAYERS; drop {sorted(set(layer) - top)}"
  )


def test_no_import_runs_upward():
  layer = _layer_of()
  upward = []
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if not f.endswith(".py"):
        continue
      path = os.path.join(dirpath, f)
      rel = os.path.relpath(path, ROOT)
      here = rel.split(os.sep)[0].removesuffix(".py")
      if here == "__init__":
        continue  # the package's own lazy `load` reaches its top on purpose
      for line, target in _imports(path):
        if target in layer and layer[target] > layer[here]:
          upward.append(
            f"{rel}:{line} ({here}, layer {layer[here]}) imports {target} (layer {layer[target]})"
          )
  assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
  """The walk above finds imports inside functions too: a planted one is caught."""
  planted = tmp_path / "m.py"
  planted.write_text(
    "def f():\n  from tripletclip_jax.train import loop\n  import tripletclip_jax.demo.world\n"
  )
  assert list(_imports(str(planted))) == [(2, "train"), (3, "demo")]
