package mqtt

import (
	"context"
)

// The plugin's anonymous group and its role: what clients without an
// account may do once the broker's listener lets them in
// (allow_anonymous true). compose.yaml's broker and the integration stack
// make both on their first start; SetAnonymousDeviceReads sets the role.
const (
	AnonymousGroup = "anonymous"
	AnonymousRole  = "espmdm-anonymous"
	// OpAnonymousAccess is the Observe operation of SetAnonymousDeviceReads.
	OpAnonymousAccess = "anonymous_access"
)

// dsErrGroupExists is the plugin's answer to createGroup for a group that
// exists.
const dsErrGroupExists = "Group already exists"

// anonymousACLs is the anonymous role: with deviceReads, a client without
// an account may subscribe to the three topic filters a device uses
// (iotsupport/+/rotation, iotsupport/+/config, iotsupport/+/firmware, as a
// device provisioned before broker accounts needs them: SPEC §19,
// MQTT_AUTH_GRACE) but not to iotsupport/# or #, and publishes nothing.
// The plugin of Mosquitto 2.0 does not substitute the client id (%c) nor
// the username (%u) in a role's topics, in any ACL type (2.0.11, tried: a
// subscription to the client's own topics is refused, the literal
// iotsupport/%c/... granted; 2.1 substitutes both), so during the grace
// a client without an account could read another device's nudges by
// naming it, as before accounts; the README says so. Without deviceReads, it may do nothing.
func anonymousACLs(deviceReads bool) []dsACL {
	acls := []dsACL{
		{ACLType: "subscribePattern", Topic: "#", Priority: 0, Allow: false},
		{ACLType: "publishClientSend", Topic: "#", Priority: 0, Allow: false},
	}
	if deviceReads {
		for _, kind := range []string{"rotation", "config", "firmware"} {
			acls = append(acls, dsACL{ACLType: "subscribePattern", Topic: TopicPrefix + "/+/" + kind, Priority: 1, Allow: true})
		}
	}
	return acls
}

// SetAnonymousDeviceReads sets what clients without an account may do on
// the broker (the plugin's anonymous group and its role AnonymousRole,
// made when missing): with on (MQTT_AUTH_GRACE), subscribe to device
// topics (anonymousACLs) while a fleet moves to broker accounts;
// without, nothing. Whether such clients get in at all is the listener's
// allow_anonymous. It is idempotent.
func (d *DynSec) SetAnonymousDeviceReads(ctx context.Context, on bool) error {
	return d.call(ctx, OpAnonymousAccess, func(ctx context.Context) error {
		cmds := []dsCommand{
			{Command: "deleteRole", Rolename: AnonymousRole},
			{Command: "createRole", Rolename: AnonymousRole, Textname: "clients without an account (espmdm, MQTT_AUTH_GRACE)", ACLs: anonymousACLs(on)},
			{Command: "createGroup", Groupname: AnonymousGroup},
			{Command: "addGroupRole", Groupname: AnonymousGroup, Rolename: AnonymousRole},
			{Command: "setAnonymousGroup", Groupname: AnonymousGroup},
		}
		res, err := d.roundTrip(ctx, cmds...)
		if err != nil {
			return err
		}
		for i, r := range res {
			switch {
			case r.Error == "":
			case i == 0 && r.Error == dsErrRoleNotFound, i == 2 && r.Error == dsErrGroupExists:
			default:
				return commandError(cmds[i], r)
			}
		}
		return nil
	})
}
