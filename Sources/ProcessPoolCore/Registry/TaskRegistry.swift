/// The task types (and error types) a program can run in workers.
/// Parent and workers must build the same registry.
public struct TaskRegistry: Sendable {
    package let runners: [String: TaskRunner]
    /// Encodes a thrown error if its type is registered: (wire name, payload).
    package let errorEncoders: [@Sendable (any Error) -> (String, [UInt8])?]
    /// Decodes a registered error from its wire name.
    package let errorDecoders: [String: @Sendable (UnsafeRawBufferPointer) throws -> any Error]
    /// Task names in registration order.
    public let taskNames: [String]

    /// A registry of the given task types (no registered error types).
    ///
    /// - Parameter tasks: The task types workers may run; their `taskName`s
    ///   must differ (two alike trap).
    public init(_ tasks: any ProcessTask.Type...) {
        self.init(tasks: tasks)
    }

    /// A registry of task types and of error types that come back to the
    /// parent as themselves. Two task types with the same `taskName` trap:
    /// that is a programming error the registry cannot resolve.
    ///
    /// - Parameters:
    ///   - tasks: The task types workers may run.
    ///   - errors: Error types a task may throw that should reach the parent
    ///     as themselves, with the same value (decoded from their `Codable`
    ///     form); other errors arrive as ``RemoteTaskError``.
    public init(tasks: [any ProcessTask.Type], errors: [any (Error & Codable).Type] = []) {
        var runners: [String: TaskRunner] = [:]
        var names: [String] = []
        for task in tasks {
            let name = task.taskName
            precondition(runners[name] == nil, "TaskRegistry: two task types are named \(name)")
            runners[name] = TaskRunner(task, name: name)
            names.append(name)
        }
        var encoders: [@Sendable (any Error) -> (String, [UInt8])?] = []
        var decoders: [String: @Sendable (UnsafeRawBufferPointer) throws -> any Error] = [:]
        for errorType in errors {
            let name = String(reflecting: errorType)
            encoders.append(makeErrorEncoder(errorType, name: name))
            decoders[name] = makeErrorDecoder(errorType)
        }
        self.runners = runners
        self.taskNames = names
        self.errorEncoders = encoders
        self.errorDecoders = decoders
    }

    /// Whether a task with this wire name is registered.
    ///
    /// - Parameter taskName: A task type's `taskName`.
    /// - Returns: True if the registry lists a task type of that name.
    public func contains(_ taskName: String) -> Bool { runners[taskName] != nil }

    /// Settles, in the parent, every answer a forked worker would otherwise
    /// work out on its first call (which task types travel as blocks; the
    /// coder's lazily built tables), so that the child takes no lock that
    /// another thread of the parent might have held at the fork.
    package func prepareForFork() {
        for runner in runners.values { runner.prepare(self) }
        warmCoderForFork()
    }

    /// Encodes `error` as a registered error, or nil if its type is not registered.
    package func encodeRegisteredError(_ error: any Error) -> (String, [UInt8])? {
        for encoder in errorEncoders {
            if let encoded = encoder(error) { return encoded }
        }
        return nil
    }
}

/// Outcome tags written by a runner in front of its payload.
package enum OutcomeTag: UInt8 {
    /// Followed by the encoded output as a u32-length-prefixed payload.
    case success = 0
    /// Followed by the error's wire name (string) and its encoded value (varint-prefixed bytes).
    case registeredError = 1
    /// Followed by the type name and the description (strings) of an unregistered error.
    case remoteError = 2
}

/// Encodes an error thrown by a task: registered types as themselves.
package func writeThrown(_ error: any Error, registry: TaskRegistry, into out: inout ByteWriter) {
    if let (name, payload) = registry.encodeRegisteredError(error) {
        out.write(OutcomeTag.registeredError.rawValue)
        out.writeString(name)
        out.writeBytes(payload)
    } else {
        writeRemoteError(typeName: String(reflecting: type(of: error)),
                         message: String(describing: error), into: &out)
    }
}

package func writeRemoteError(typeName: String, message: String, into out: inout ByteWriter) {
    out.write(OutcomeTag.remoteError.rawValue)
    out.writeString(typeName)
    out.writeString(message)
}

private func makeErrorEncoder<E: Error & Codable>(_: E.Type, name: String) -> @Sendable (any Error) -> (String, [UInt8])? {
    return { error in
        guard let typed = error as? E, type(of: typed) == E.self else { return nil }
        guard let payload = try? BinaryEncoder().encode(typed) else { return nil }
        return (name, payload)
    }
}

private func makeErrorDecoder<E: Error & Codable>(_: E.Type) -> @Sendable (UnsafeRawBufferPointer) throws -> any Error {
    return { raw in try BinaryDecoder().decode(E.self, from: raw) }
}
