package mqtt

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// The dynamic security plugin's control topics (Mosquitto 2.0): a message
// on the first holds {"commands":[...]}; the plugin answers every command,
// in order, with {"responses":[...]} on the second — to every client
// subscribed to it, so each command carries correlationData that its
// response repeats.
const (
	DynSecTopic         = "$CONTROL/dynamic-security/v1"
	DynSecResponseTopic = DynSecTopic + "/response"
)

// dsCommand is one command of a request. Only the fields a command uses
// are set.
type dsCommand struct {
	Command         string   `json:"command"`
	Username        string   `json:"username,omitempty"`
	Password        string   `json:"password,omitempty"` // never logged
	Rolename        string   `json:"rolename,omitempty"`
	Groupname       string   `json:"groupname,omitempty"`
	Textname        string   `json:"textname,omitempty"`
	Roles           []dsRole `json:"roles,omitempty"`
	ACLs            []dsACL  `json:"acls,omitempty"`
	ACLType         string   `json:"acltype,omitempty"`
	Topic           string   `json:"topic,omitempty"`
	Allow           *bool    `json:"allow,omitempty"`
	Priority        *int     `json:"priority,omitempty"`
	Verbose         *bool    `json:"verbose,omitempty"`
	Count           *int     `json:"count,omitempty"`
	Offset          *int     `json:"offset,omitempty"`
	CorrelationData string   `json:"correlationData,omitempty"`
}

type dsRole struct {
	Rolename string `json:"rolename"`
	Priority *int   `json:"priority,omitempty"`
}

// dsACL is one access control entry of a role.
type dsACL struct {
	ACLType  string `json:"acltype"`
	Topic    string `json:"topic"`
	Priority int    `json:"priority"`
	Allow    bool   `json:"allow"`
}

func (a dsACL) String() string {
	verb := "deny"
	if a.Allow {
		verb = "allow"
	}
	return fmt.Sprintf("%s %s %s (priority %d)", verb, a.ACLType, a.Topic, a.Priority)
}

type dsRequest struct {
	Commands []dsCommand `json:"commands"`
}

// dsResponse is the plugin's answer to one command: Error is empty on
// success.
type dsResponse struct {
	Command         string          `json:"command"`
	Error           string          `json:"error,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
	CorrelationData string          `json:"correlationData,omitempty"`
}

type dsResponses struct {
	Responses []dsResponse `json:"responses"`
}

// The plugin's error texts this adapter acts on (Mosquitto 2.0).
const (
	dsErrClientExists   = "Client already exists"
	dsErrRoleExists     = "Role already exists"
	dsErrClientNotFound = "Client not found"
	dsErrRoleNotFound   = "Role not found"
)

// dsClient is a client as getClient and listClients (verbose) describe it.
type dsClient struct {
	Username string   `json:"username"`
	Textname string   `json:"textname"`
	Disabled bool     `json:"disabled"`
	Roles    []dsRole `json:"roles"`
	Groups   []struct {
		Groupname string `json:"groupname"`
	} `json:"groups"`
}

// dsRoleInfo is a role as getRole and listRoles (verbose) describe it.
type dsRoleInfo struct {
	Rolename string  `json:"rolename"`
	ACLs     []dsACL `json:"acls"`
}

func ptr[T any](v T) *T { return &v }

// deviceACLs is what a device's role holds (SPEC §19): it may subscribe to
// its own topics and its model's firmware topic, and nothing else, and
// publish nothing — said explicitly, so that a broker whose default access
// is wider does not let devices further.
func deviceACLs(clientID, modelCode string) []dsACL {
	return []dsACL{
		{ACLType: "subscribePattern", Topic: TopicPrefix + "/" + clientID + "/#", Priority: 1, Allow: true},
		{ACLType: "subscribePattern", Topic: TopicPrefix + "/" + modelCode + "/firmware", Priority: 1, Allow: true},
		{ACLType: "subscribePattern", Topic: "#", Priority: 0, Allow: false},
		{ACLType: "publishClientSend", Topic: "#", Priority: 0, Allow: false},
	}
}

// The textname of a device account records when espmdm made it.
const createdPrefix = "espmdm device account, created "

func deviceTextname(created time.Time) string {
	return createdPrefix + created.UTC().Format(time.RFC3339)
}

// createdAt reads the creation time from a textname; zero when there is
// none.
func createdAt(textname string) time.Time {
	rest, ok := strings.CutPrefix(textname, createdPrefix)
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, rest)
	if err != nil {
		return time.Time{}
	}
	return t
}

// aclKey identifies an ACL within a role (the plugin allows one per type
// and topic).
func aclKey(a dsACL) string { return a.ACLType + " " + a.Topic }

// aclDiff returns the ACLs to remove from have and to add so that have
// becomes want (an entry whose allow or priority differ is removed and
// added again).
func aclDiff(have, want []dsACL) (remove, add []dsACL) {
	wantBy := map[string]dsACL{}
	for _, a := range want {
		wantBy[aclKey(a)] = a
	}
	haveBy := map[string]dsACL{}
	for _, a := range have {
		haveBy[aclKey(a)] = a
		if w, ok := wantBy[aclKey(a)]; !ok || w != a {
			remove = append(remove, a)
		}
	}
	for _, a := range want {
		if h, ok := haveBy[aclKey(a)]; !ok || h != a {
			add = append(add, a)
		}
	}
	return remove, add
}

// accountProblems says how a device account differs from what
// EnsureDeviceAccount makes, given its role (nil when missing).
func accountProblems(c dsClient, role *dsRoleInfo) []string {
	code, _, ok := model.ParseClientID(c.Username)
	if !ok {
		return []string{"not a device client id (iotdevice-<model code>-<key>): no device can have this account"}
	}
	var problems []string
	if role == nil {
		problems = append(problems, "its role "+c.Username+" is missing")
	} else if remove, add := aclDiff(role.ACLs, deviceACLs(c.Username, code)); len(remove)+len(add) > 0 {
		var d []string
		for _, a := range remove {
			d = append(d, "has "+a.String())
		}
		for _, a := range add {
			d = append(d, "lacks "+a.String())
		}
		problems = append(problems, "its role's access differs: "+strings.Join(d, "; "))
	}
	own := false
	var others []string
	for _, r := range c.Roles {
		if r.Rolename == c.Username {
			own = true
		} else {
			others = append(others, r.Rolename)
		}
	}
	if !own {
		problems = append(problems, "does not hold its role "+c.Username)
	}
	if len(others) > 0 {
		sort.Strings(others)
		problems = append(problems, "holds other roles: "+strings.Join(others, ", "))
	}
	if len(c.Groups) > 0 {
		var gs []string
		for _, g := range c.Groups {
			gs = append(gs, g.Groupname)
		}
		sort.Strings(gs)
		problems = append(problems, "is in groups: "+strings.Join(gs, ", "))
	}
	return problems
}

// repairCommands are the commands that make an existing account (c, with
// role, nil when missing) what EnsureDeviceAccount makes, given the fresh
// creation's textname when the account has none.
func repairCommands(acct model.BrokerAccount, modelCode string, c dsClient, role *dsRoleInfo, textname string) []dsCommand {
	name := acct.ClientID
	var cmds []dsCommand
	want := deviceACLs(name, modelCode)
	if role == nil {
		cmds = append(cmds, dsCommand{Command: "createRole", Rolename: name, ACLs: want})
	} else {
		remove, add := aclDiff(role.ACLs, want)
		for _, a := range remove {
			cmds = append(cmds, dsCommand{Command: "removeRoleACL", Rolename: name, ACLType: a.ACLType, Topic: a.Topic})
		}
		for _, a := range add {
			cmds = append(cmds, dsCommand{Command: "addRoleACL", Rolename: name, ACLType: a.ACLType, Topic: a.Topic,
				Allow: ptr(a.Allow), Priority: ptr(a.Priority)})
		}
	}
	cmds = append(cmds, dsCommand{Command: "setClientPassword", Username: name, Password: acct.Password})
	own := false
	for _, r := range c.Roles {
		if r.Rolename == name {
			own = true
			continue
		}
		cmds = append(cmds, dsCommand{Command: "removeClientRole", Username: name, Rolename: r.Rolename})
	}
	if !own {
		cmds = append(cmds, dsCommand{Command: "addClientRole", Username: name, Rolename: name})
	}
	for _, g := range c.Groups {
		cmds = append(cmds, dsCommand{Command: "removeGroupClient", Groupname: g.Groupname, Username: name})
	}
	switch {
	case acct.Disabled && !c.Disabled:
		cmds = append(cmds, dsCommand{Command: "disableClient", Username: name})
	case !acct.Disabled && c.Disabled:
		cmds = append(cmds, dsCommand{Command: "enableClient", Username: name})
	}
	if createdAt(c.Textname).IsZero() {
		cmds = append(cmds, dsCommand{Command: "modifyClient", Username: name, Textname: textname})
	}
	return cmds
}
