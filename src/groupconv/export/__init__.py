"""Deployment: a model (a zoo model, a trained run's, or any model using groupconv's layers or `accelerate()`) as an
ONNX file (both of torch's exporters), a TorchScript file, or a torch.export ExportedProgram, checked against eager.

`onnx_translation_table()` is the table of groupconv's ONNX translations for torch.onnx.export's
`custom_translation_table=`; torch's default exporter already finds them once groupconv is imported.
"""

from ..ops.custom_ops import onnx_translation_table
from .formats import FORMATS, ExportError, check_format, compare, export_model, load_exported

__all__ = ["FORMATS", "ExportError", "check_format", "compare", "export_model", "load_exported",
           "onnx_translation_table"]
