import NIOCore

/// Joins two connections on one event loop and relays plaintext both ways without leaving it:
/// what one side reads is written to the other (flushed once per read batch), and a side reads
/// only while the other can take more (its outbound buffer is under the high-water mark), so a
/// slow receiver stops the sender instead of growing buffers. When either side closes, the other
/// closes after what was written to it went out; an error closes its side (and so both).
///
/// A glue starts in one of two phases before it is paired: `.control`, on the encrypted side
/// while the head's request or the worker's answer is awaited (its first frame goes to
/// `onControl`, and it keeps reading until then), or `.waiting` (reads are held: the head's
/// llama-server connection is not read before the worker said ok, and the worker's rpc-server
/// connection not before the ok was written).
final class RelayGlue: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase { case control, waiting, paired }

    private(set) var phase: Phase
    /// The other side (on this event loop), known before pairing so that a close is passed on in
    /// any phase.
    var partner: RelayGlue?
    private var context: ChannelHandlerContext?
    private var readHeld = false
    /// Frames that arrived after the control frame, before pairing (sent on once paired).
    private var held: [ByteBuffer] = []
    private var timeout: Scheduled<Void>?
    /// How long the control phase may last before the connection is given up.
    let controlTimeout: TimeAmount
    /// The first frame of the control phase.
    var onControl: ((ByteBuffer) -> Void)?
    /// Called when this side's connection has closed.
    var onInactive: ((RelayGlue) -> Void)?
    /// The peer's static key, once the secure handshake finished (``SecureChannelEstablished``).
    private(set) var peerKey: [UInt8] = []
    /// The first error seen on this side (the reason a failure is reported with).
    private(set) var error: (any Error)?
    /// This side was closed because the other side closed (not a failure of this side).
    private(set) var closedByPartner = false
    /// This side's connection has closed.
    private(set) var isClosed = false

    init(phase: Phase, controlTimeout: TimeAmount = .seconds(10)) {
        self.phase = phase
        self.controlTimeout = controlTimeout
    }

    /// Pairs two glues (both on the current event loop) and starts relaying.
    static func pair(_ a: RelayGlue, _ b: RelayGlue) {
        a.partner = b
        b.partner = a
        a.startRelaying()
        b.startRelaying()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        guard phase == .control else { return }
        let me = NIOLoopBound(self, eventLoop: context.eventLoop)
        let ms = controlTimeout.nanoseconds / 1_000_000
        timeout = context.eventLoop.scheduleTask(in: controlTimeout) {
            me.value.fail(SecureRelayError.handshakeFailed("no answer within \(ms) ms"))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
        onControl = nil  // its closure may hold this glue
        onInactive = nil
        self.context = nil
    }

    /// Ends this side with `error` (the reason it reports).
    func fail(_ error: any Error) {
        if self.error == nil { self.error = error }
        context?.close(promise: nil)
    }

    /// Sends `frame` (a control message) and closes once it went out.
    func answerAndClose(_ frame: [UInt8]) {
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(bytes: frame))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// Sends `frame` now (a control message before pairing).
    func send(_ frame: [UInt8]) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: frame)), promise: nil)
    }

    private func startRelaying() {
        timeout?.cancel()
        phase = .paired
        let frames = held
        held = []
        for frame in frames { partner?.context?.write(wrapOutboundOut(frame), promise: nil) }
        if !frames.isEmpty { partner?.context?.flush() }
        resumeReading()
    }

    private var partnerWritable: Bool { partner?.context?.channel.isWritable ?? false }

    private func resumeReading() {
        guard readHeld, phase == .paired, partnerWritable, let context else { return }
        readHeld = false
        context.read()
    }

    func read(context: ChannelHandlerContext) {
        switch phase {
        case .control: context.read()
        case .waiting: readHeld = true
        case .paired:
            if partnerWritable { context.read() } else { readHeld = true }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let established = event as? SecureChannelEstablished { peerKey = established.peerKey }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch phase {
        case .control:
            phase = .waiting
            let handle = onControl
            onControl = nil
            handle?(frame)
        case .waiting:
            held.append(frame)
        case .paired:
            partner?.context?.write(wrapOutboundOut(frame), promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if phase == .paired { partner?.context?.flush() }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        isClosed = true
        timeout?.cancel()
        onInactive?(self)
        onInactive = nil
        if let other = partner {
            partner = nil
            other.partner = nil
            other.partnerClosed()
        }
        context.fireChannelInactive()
    }

    /// The other side closed: close this one once what was written to it went out.
    private func partnerClosed() {
        closedByPartner = true
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
    }
}
