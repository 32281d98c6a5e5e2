import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// ssh config parsing and resolution (readconf.c's rules), without a server.
@Suite("ssh config parsing", .boundedExitWait)
struct SSHConfigParsingTests {
    /// A config file (mode 600) in a fresh directory; returns its path.
    func configFile(_ text: String, name: String = "config", mode: mode_t = 0o600) throws -> String {
        var template = Array("/tmp/ppool-sshconf-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw FixtureError("mkdtemp failed") }
        let directory = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let path = directory + "/" + name
        try writeFile(path, text)
        chmod(path, mode)
        return path
    }

    func resolve(_ text: String, _ host: String = "node1", options: SSHOptions = SSHOptions()) throws -> ResolvedHost {
        var options = options
        options.configFile = try configFile(text)
        return ResolvedHost(try SSHHost(host), options: options)
    }

    @Test("values keep their case; keywords do not; key=value, key = value and key value")
    func valueCase() throws {
        let host = try resolve("""
            HOST node1
              User=Alice
              HostName = Node1.Example.ORG
              pOrT 2222
            """)
        #expect(host.configError == nil)
        #expect(host.user == "Alice")
        #expect(host.address == "Node1.Example.ORG")
        #expect(host.port == 2222)
    }

    @Test("the first value wins; IdentityFile accumulates; %h %p %r %u and ~ expand")
    func firstWinsAndTokens() throws {
        let host = try resolve("""
            Host node*
              User first
              IdentityFile ~/.ssh/id_%h_%p_%r
              IdentityFile /keys/%u
            Host *
              User second
              Port 2200
              HostName %h.farm
            """)
        #expect(host.user == "first")
        #expect(host.address == "node1.farm")
        #expect(host.identityFiles.prefix(2) == [SSHOptions.localHome + "/.ssh/id_node1.farm_2200_first", "/keys/" + SSHOptions.localUser])
    }

    @Test("ProxyJump, ProxyCommand and Match are refused naming the file and line")
    func refused() throws {
        let jump = try resolve("Host other\n  ProxyJump x\nHost node1\n  ProxyJump bastion\n")
        #expect(jump.configError?.contains(":4") == true)
        #expect(jump.configError?.contains("proxyjump") == true)
        #expect(jump.address != "node1")  // fails closed: never connects straight to the name
        var options = SSHOptions()
        options.configFile = try configFile("ProxyCommand nc %h %p\n")
        #expect(throws: SSHError.self) { try ResolvedHost(resolving: try SSHHost("node1"), options: options) }
        let command = try resolve("Host *\n  ProxyCommand ssh -W %h:%p gw\n")
        #expect(command.configError?.contains("proxycommand") == true)
        let match = try resolve("Host x\n  User a\nMatch host node1\n  User b\n")
        #expect(match.configError?.contains("Match") == true)
        #expect(match.configError?.contains(":3") == true)
        // Not applying to this host: fine.
        let other = try resolve("Host gateway\n  ProxyJump bastion\n")
        #expect(other.configError == nil)
        // Harmless ones are ignored.
        let harmless = try resolve("ServerAliveInterval 5\nCompression yes\nForwardAgent no\nProxyJump none\n")
        #expect(harmless.configError == nil)
    }

    @Test("Include: relative to ~/.ssh or absolute, globs, in place, inside a Host block")
    func include() throws {
        let one = try configFile("Host node1\n  User included\n", name: "a.conf")
        let directory = String(one[..<one.lastIndex(of: "/")!])
        try writeFile(directory + "/b.conf", "Host node1\n  Port 2201\n")
        chmod(directory + "/b.conf", 0o600)
        let host = try resolve("Include \(directory)/*.conf\nHost *\n  User later\n  Port 22\n")
        #expect(host.configError == nil)
        #expect(host.user == "included")
        #expect(host.port == 2201)
        // An Include inside a Host block that does not match is skipped whole.
        let skipped = try resolve("Host elsewhere\n  Include \(directory)/*.conf\nHost *\n  User later\n")
        #expect(skipped.user == "later")
    }

    @Test("a config file others can write is refused")
    func permissions() throws {
        var options = SSHOptions()
        options.configFile = try configFile("Host *\n  User x\n", mode: 0o666)
        let host = ResolvedHost(try SSHHost("node1"), options: options)
        #expect(host.configError?.contains("bad owner or permissions") == true)
    }

    @Test("HostKeyAlias, UserKnownHostsFile, StrictHostKeyChecking, IdentitiesOnly, IdentityAgent")
    func trustSettings() throws {
        let host = try resolve("""
            Host node1
              HostKeyAlias Farm-Alias
              UserKnownHostsFile ~/.ssh/farm_hosts /etc/farm_hosts
              StrictHostKeyChecking accept-new
              IdentitiesOnly yes
              IdentityAgent ~/agent.sock
            """)
        #expect(host.hostKeyAlias == "Farm-Alias")
        #expect(host.userKnownHostsFiles == [SSHOptions.localHome + "/.ssh/farm_hosts", "/etc/farm_hosts"])
        #expect(host.hostKeyPolicy == .acceptNew)
        #expect(host.identitiesOnly)
        #expect(host.agentSocket == SSHOptions.localHome + "/agent.sock")
        #expect(try resolve("IdentityAgent none\n").useAgent == false)
        #expect(try resolve("StrictHostKeyChecking no\n").hostKeyPolicy == .acceptNew)
        #expect(try resolve("StrictHostKeyChecking yes\n").hostKeyPolicy == .strict)
        // Set in code, the options win over the config.
        var options = SSHOptions()
        options.hostKeyPolicy = .strict
        options.knownHostsFile = "/pinned"
        let pinned = try resolve("StrictHostKeyChecking accept-new\nUserKnownHostsFile /other\n", options: options)
        #expect(pinned.hostKeyPolicy == .strict)
        #expect(pinned.userKnownHostsFiles == ["/pinned"])
    }

    @Test("quoted values and comments")
    func quoting() throws {
        let host = try resolve("Host \"node1\" # a comment\n  IdentityFile \"/keys/my key\"\n  User 'bob' # trailing\n")
        #expect(host.identityFiles.first == "/keys/my key")
        #expect(host.user == "bob")
    }
}
