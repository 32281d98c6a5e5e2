/// A FIFO queue with O(1) amortised push and pop (an array and a head index).
package struct RingQueue<Element> {
    private var storage: [Element?] = []
    private var head = 0

    package init() {}

    package var count: Int { storage.count - head }
    package var isEmpty: Bool { head == storage.count }
    package var first: Element? { isEmpty ? nil : storage[head] }

    package mutating func append(_ element: Element) { storage.append(element) }

    /// The position (0 = first) of the first element matching `predicate`.
    package func firstIndex(where predicate: (Element) -> Bool) -> Int? {
        for index in head..<storage.count where predicate(storage[index]!) { return index - head }
        return nil
    }

    package mutating func popFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        storage[head] = nil
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: storage.count < 4096)
            head = 0
        } else if head >= 1024 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    /// Puts `elements` in front, in their order (before the current first).
    package mutating func prepend(_ elements: [Element]) {
        guard !elements.isEmpty else { return }
        if head >= elements.count {
            head -= elements.count
            for (offset, element) in elements.enumerated() { storage[head + offset] = element }
        } else {
            storage = elements.map { Optional($0) } + storage[head...]
            head = 0
        }
    }

    /// Removes and returns everything, oldest first.
    package mutating func drain() -> [Element] {
        let all = storage[head...].map { $0! }
        storage = []
        head = 0
        return all
    }

    /// Keeps only the elements for which `keep` is true.
    package mutating func removeAll(where remove: (Element) -> Bool) {
        let kept = storage[head...].compactMap { $0 }.filter { !remove($0) }
        storage = kept.map { Optional($0) }
        head = 0
    }
}
