package record

// Version is the schema version of every record; a reader refuses a version
// it does not know rather than guessing.
const Version = 1

// Versioned is implemented by every record.
type Versioned interface{ RecordVersion() int }

func (h *Host) RecordVersion() int           { return h.V }
func (c *Credential) RecordVersion() int     { return c.V }
func (t *Token) RecordVersion() int          { return t.V }
func (e *EnrollSession) RecordVersion() int  { return e.V }
func (c *Challenge) RecordVersion() int      { return c.V }
func (w *WorkloadIndex) RecordVersion() int  { return w.V }
func (e *EKEnrollment) RecordVersion() int   { return e.V }
func (e *EKAllow) RecordVersion() int        { return e.V }
func (p *Person) RecordVersion() int         { return p.V }
func (l *LoginState) RecordVersion() int     { return l.V }
func (l *LoginCode) RecordVersion() int      { return l.V }
func (d *DeviceAuth) RecordVersion() int     { return d.V }
func (d *DeviceUserCode) RecordVersion() int { return d.V }
func (g *LoginGrant) RecordVersion() int     { return g.V }

func (c *UsedChallenge) RecordVersion() int { return c.V }
