// Scalar elementary functions on Double and Float, routed through Foundation in one place so the rest of the
// module does not import it.

#if canImport(Foundation)
    import Foundation
#endif

@inline(__always) package func _log(_ x: Double) -> Double { Foundation.log(x) }
@inline(__always) package func _cos(_ x: Double) -> Double { Foundation.cos(x) }
@inline(__always) package func _sin(_ x: Double) -> Double { Foundation.sin(x) }
@inline(__always) package func _pow(_ x: Double, _ y: Double) -> Double { Foundation.pow(x, y) }
@inline(__always) package func _log(_ x: Float) -> Float { Foundation.logf(x) }
@inline(__always) package func _exp(_ x: Float) -> Float { Foundation.expf(x) }
@inline(__always) package func _exp2(_ x: Float) -> Float { Foundation.exp2f(x) }
