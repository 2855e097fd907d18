import Foundation

/// A validated SHARP plan: which target layer computes its MLP with which reference layer's weights.
///
/// Rules: every layer index is in `0..<numLayers`, a target never references itself, and a reference is
/// never itself a target (no chains), so each shared weight is stored exactly once.
public struct SharpPlan: Equatable, Sendable {
    public let numLayers: Int
    /// Target layer -> reference layer.
    public let referenceByTarget: [Int: Int]

    /// Validates a plan given with integer keys.
    public init(referenceByTarget: [Int: Int], numLayers: Int) throws {
        guard numLayers > 0 else { throw SharpError.invalidPlan("the model has no layers (num_layers = \(numLayers))") }
        for (target, reference) in referenceByTarget.sorted(by: { $0.key < $1.key }) {
            guard (0..<numLayers).contains(target) else {
                throw SharpError.invalidPlan("target layer \(target) is outside 0..<\(numLayers)")
            }
            guard (0..<numLayers).contains(reference) else {
                throw SharpError.invalidPlan("layer \(target) references layer \(reference), outside 0..<\(numLayers)")
            }
            guard target != reference else {
                throw SharpError.invalidPlan("layer \(target) references itself")
            }
            if let next = referenceByTarget[reference] {
                throw SharpError.invalidPlan(
                    "layer \(target) references layer \(reference), which is itself a target (of \(next)); chains are not allowed"
                )
            }
        }
        self.numLayers = numLayers
        self.referenceByTarget = referenceByTarget
    }

    /// Validates a plan as stored in JSON (decimal-string keys, e.g. `{"17": 16}`).
    public init(rawPlan: [String: Int], numLayers: Int) throws {
        var parsed: [Int: Int] = [:]
        for (key, reference) in rawPlan {
            let trimmed = key.trimmingCharacters(in: .whitespaces)
            guard let target = Int(trimmed), String(target) == trimmed else {
                throw SharpError.invalidPlan("plan key \"\(key)\" is not a layer index")
            }
            guard parsed[target] == nil else {
                throw SharpError.invalidPlan("layer \(target) appears twice in the plan")
            }
            parsed[target] = reference
        }
        try self.init(referenceByTarget: parsed, numLayers: numLayers)
    }

    /// An empty plan: a plain model.
    public static func empty(numLayers: Int) -> SharpPlan {
        SharpPlan(unchecked: [:], numLayers: numLayers)
    }

    private init(unchecked: [Int: Int], numLayers: Int) {
        self.numLayers = numLayers
        self.referenceByTarget = unchecked
    }

    /// Target layers, ascending.
    public var targets: [Int] { referenceByTarget.keys.sorted() }
    /// Layers whose MLP weights are shared with at least one target, ascending.
    public var references: [Int] { Set(referenceByTarget.values).sorted() }
    public var isEmpty: Bool { referenceByTarget.isEmpty }

    public func isTarget(_ layer: Int) -> Bool { referenceByTarget[layer] != nil }
    /// The layer whose MLP weights `layer` computes with (itself when it is not a target).
    public func weightSource(for layer: Int) -> Int { referenceByTarget[layer] ?? layer }

    /// The plan in its JSON form (decimal-string keys).
    public var rawPlan: [String: Int] {
        Dictionary(uniqueKeysWithValues: referenceByTarget.map { (String($0.key), $0.value) })
    }
}
