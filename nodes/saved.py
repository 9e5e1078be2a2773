"""Files the save nodes write and the load nodes list: encodings and identity deltas as .safetensors.

DVA Save Latent and DVA Save Identity Delta write a new numbered file under the output folder (by default
in its ``dva/`` sub-folder); DVA Load Latent and DVA Load Identity Delta offer the input folder's files and
that sub-folder's, each only of its own kind. Both pairs build their schemas and do their file work here.
"""

import os

from comfy_api.v0_0_2 import io

from ._host import output_path

SUFFIX = ".safetensors"
OUTPUT_TAG = " [output]"  # ComfyUI's annotation for a file in the output folder
SAVE_FOLDER = "dva"  # output sub-folder the save nodes write to by default (listed by the load nodes)


def save_schema(*, node_id: str, display_name: str, category: str, description: str, value: "io.Input",
                default_prefix: str) -> io.Schema:
    """An output node that saves its one input ``value`` under a file name prefix in the output folder."""
    return io.Schema(
        node_id=node_id, display_name=display_name, category=category, description=description,
        inputs=[
            value,
            io.String.Input("filename_prefix", default=default_prefix, tooltip=
                            "File name prefix inside the output folder (may contain sub-folders)."),
        ],
        outputs=[],
        is_output_node=True,
    )


def load_schema(*, node_id: str, display_name: str, category: str, description: str, file_input: str, kind: str,
                tooltip: str, output: "io.Output") -> io.Schema:
    """A node with one combo, ``file_input``, over the saved files of ``kind``, and one ``output``."""
    return io.Schema(
        node_id=node_id, display_name=display_name, category=category, description=description,
        inputs=[io.Combo.Input(file_input, options=saved_files(kind), tooltip=tooltip)],
        outputs=[output],
    )


def save_to_output(filename_prefix: str, value, save) -> dict:
    """Write ``value`` to a new numbered file under the output folder; the node's ``ui`` entry showing it.

    A file-backed value (one with ``open``: a streamed encoding) is copied as it is, crops included,
    without loading it; any other is written by ``save(path, value)``.
    """
    path, name, subfolder = output_path(filename_prefix, SUFFIX)
    if hasattr(value, "open"):
        import shutil

        from dva_model.formats.files import write_atomically

        write_atomically(path, lambda tmp: shutil.copyfile(value.path, tmp))
    else:
        save(path, value)
    return {"files": [{"filename": name, "subfolder": subfolder, "type": "output"}]}


def saved_files(kind: str) -> list:
    """The .safetensors files of ``kind`` ("latent" or "delta") users can pick: the input folder's, then
    those under the output folder's ``dva/`` (where the save nodes' default prefixes write; annotated
    ``[output]``). Only that sub-folder is walked, not the whole output folder, and each file's kind is
    peeked at once (``_host.file_kind``), so listing stays cheap on every /object_info."""
    import folder_paths

    from ._host import file_kind, input_files

    names = [n for n in input_files(SUFFIX)
             if file_kind(os.path.join(folder_paths.get_input_directory(), n)) in (kind, "unknown")]
    output = folder_paths.get_output_directory()
    for folder, _, files in sorted(os.walk(os.path.join(output, SAVE_FOLDER))):
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.endswith(SUFFIX) and file_kind(path) in (kind, "unknown"):
                names.append(os.path.relpath(path, output).replace(os.sep, "/") + OUTPUT_TAG)
    return names
