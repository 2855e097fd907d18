import Foundation

/// Small fp32 kernels for the reference forward pass. Matrices are row-major `[Float]`.
enum LinearAlgebra {
    /// `y = x W^T` for `x` (rows, inner) and `W` (outputs, inner): `y` is (rows, outputs).
    static func matmulTransposed(_ x: [Float], rows: Int, inner: Int, _ weight: [Float], outputs: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * outputs)
        x.withUnsafeBufferPointer { xs in
            weight.withUnsafeBufferPointer { ws in
                y.withUnsafeMutableBufferPointer { ys in
                    guard let xBase = xs.baseAddress, let wBase = ws.baseAddress else { return }
                    for row in 0..<rows {
                        let xRow = xBase + row * inner
                        for output in 0..<outputs {
                            ys[row * outputs + output] = dot(xRow, wBase + output * inner, count: inner)
                        }
                    }
                }
            }
        }
        return y
    }

    /// `y = x M` for `x` (rows, inner) and `M` (inner, columns): `y` is (rows, columns).
    static func matmul(_ x: [Float], rows: Int, inner: Int, _ matrix: [Float], columns: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * columns)
        x.withUnsafeBufferPointer { xs in
            matrix.withUnsafeBufferPointer { ms in
                y.withUnsafeMutableBufferPointer { ys in
                    for row in 0..<rows {
                        for k in 0..<inner {
                            let factor = xs[row * inner + k]
                            if factor == 0 { continue }
                            let mRow = k * columns
                            for column in 0..<columns {
                                ys[row * columns + column] += factor * ms[mRow + column]
                            }
                        }
                    }
                }
            }
        }
        return y
    }

    /// Dot product of two contiguous float runs (4 partial sums).
    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
        var index = 0
        while index + 4 <= count {
            s0 += a[index] * b[index]
            s1 += a[index + 1] * b[index + 1]
            s2 += a[index + 2] * b[index + 2]
            s3 += a[index + 3] * b[index + 3]
            index += 4
        }
        while index < count {
            s0 += a[index] * b[index]
            index += 1
        }
        return (s0 + s1) + (s2 + s3)
    }

    /// Adds a per-column vector to every row.
    static func addRowVector(_ x: inout [Float], columns: Int, _ vector: [Float]) {
        for index in x.indices { x[index] += vector[index % columns] }
    }

    /// Multiplies every row element-wise by a per-column vector.
    static func scaleColumns(_ x: [Float], columns: Int, by vector: [Float]) -> [Float] {
        var y = x
        for index in y.indices { y[index] *= vector[index % columns] }
        return y
    }

    /// RMS norm of each row: `x * rsqrt(mean(x^2) + eps) * weight`.
    static func rmsNorm(_ x: [Float], columns: Int, weight: [Float], eps: Float) -> [Float] {
        var y = x
        let rows = x.count / columns
        for row in 0..<rows {
            let start = row * columns
            var sumOfSquares: Float = 0
            for column in 0..<columns { sumOfSquares += x[start + column] * x[start + column] }
            let inverse = 1 / (sumOfSquares / Float(columns) + eps).squareRoot()
            for column in 0..<columns { y[start + column] = x[start + column] * inverse * weight[column] }
        }
        return y
    }

    /// `z * sigmoid(z)`.
    @inline(__always)
    static func silu(_ z: Float) -> Float { z / (1 + Foundation.exp(-z)) }

    /// Numerically stable softmax in place.
    static func softmax(_ values: inout [Float]) {
        guard let maximum = values.max() else { return }
        var total: Float = 0
        for index in values.indices {
            values[index] = Foundation.exp(values[index] - maximum)
            total += values[index]
        }
        for index in values.indices { values[index] /= total }
    }
}
