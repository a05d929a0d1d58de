"""The analysis layer every pass uses: graph structure (graph), constant values (constants),
static types and shapes (shapes), provably equal symbolic dimensions (dims), op tables (ops), and the
private onnx-graphsurgeon APIs behind one module (private_api). Passes never keep their own copy."""
